"""FID, KID and Inception Score from Inception features (docs/METHOD.md §5)."""
from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.special import rel_entr

from hdit.metrics.images import MetricsError


def fid_label(n: int) -> str:
    """FID over 50,000 samples is "FID-50k"; 500 -> "FID-500", 1000 -> "FID-1k"."""
    return f"FID-{n // 1000}k" if n % 1000 == 0 else f"FID-{n}"


class Moments:
    """Streaming mean and (N - 1)-normalised covariance of feature batches, accumulated in float64."""

    def __init__(self, dim: int):
        self.n, self.sum, self.outer = 0, np.zeros(dim), np.zeros((dim, dim))

    def update(self, feats: np.ndarray) -> None:
        x = np.asarray(feats, dtype=np.float64)
        self.n += len(x)
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise MetricsError(f"{self.n} feature vector(s); a covariance needs at least 2 samples")
        mu = self.sum / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def psd_factor(sigma: np.ndarray) -> np.ndarray:
    """F with F F^T = sigma for a symmetric PSD sigma (pivoted Cholesky; exact for a singular sigma, e.g. fewer
    samples than dimensions): [d, rank]."""
    chol, piv, rank, info = scipy.linalg.lapack.dpstrf(sigma, lower=1)
    if info < 0:
        raise MetricsError(f"pivoted Cholesky failed (LAPACK info {info})")
    factor = np.zeros((len(sigma), rank))
    factor[piv - 1] = np.tril(chol)[:, :rank]
    return factor


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) without a matrix square root: with S2 = F F^T, S1 S2 has the eigenvalues of the PSD
    F^T S1 F."""
    factor = psd_factor(sigma2)
    eig = np.linalg.eigvalsh(factor.T @ sigma1 @ factor)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) (Heusel et al. 2017), as clean-fid's
    `frechet_distance` but with the trace of the root from a symmetric eigenproblem: ~10x faster than
    `scipy.linalg.sqrtm` at 2048-d and no complex round-off on singular covariances (tested equal)."""
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise MetricsError(f"non-finite values in {name} (NaN/inf features?); cannot compute FID")
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise MetricsError(f"statistics of different dimension: mu {mu1.shape} / {mu2.shape}, "
                           f"sigma {s1.shape} / {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    diff = mu1 - mu2
    fid = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))
    if not np.isfinite(fid):
        raise MetricsError(f"Frechet distance is {fid}; covariances are ill-conditioned")
    return fid


def _trace_roots(g: np.ndarray, w: np.ndarray, c: float, max_bytes: float = 64e6) -> np.ndarray:
    """Tr((S_b S_ref)^1/2) for every weight row w_b, with G = X F (S_ref = F F^T) and S_b = c (X^T diag(w_b) X -
    mu_b mu_b^T): F^T S_b F = H^T H with H = c^1/2 diag(w_b)^1/2 (G - 1 g_b^T), g_b = G^T w_b. Its non-zero
    eigenvalues are those of H H^T (n x n, built from the Gram matrix G G^T once) or of H^T H (rank x rank):
    whichever is smaller is decomposed, batched over resamples."""
    n, r = g.shape
    m = min(n, r)
    chunk = max(1, int(max_bytes // (8 * m * m)))
    gram = g @ g.T if n <= r else None
    roots = []
    for wb in np.array_split(w, range(chunk, len(w), chunk)):
        if gram is not None:
            kw = wb @ gram  # [B, n]: (G g_b)
            wkw = (kw * wb).sum(1)  # g_b . g_b
            centred = gram[None] - kw[:, :, None] - kw[:, None, :] + wkw[:, None, None]
            sw = np.sqrt(wb)
            mats = c * sw[:, :, None] * centred * sw[:, None, :]
        else:
            gb = wb @ g  # [B, r]
            mats = c * ((g.T[None] * wb[:, None, :]) @ g - gb[:, :, None] * gb[:, None, :])
        eig = np.linalg.eigvalsh(mats)
        roots.append(np.sqrt(np.clip(eig, 0, None)).sum(1))
    return np.concatenate(roots)


def fid_bootstrap(feats: np.ndarray, mu_ref, sigma_ref, resamples: int = 200, seed: int = 0) -> np.ndarray:
    """FIDs of `resamples` bootstrap resamples of the sample features (n rows drawn with replacement from a
    seeded generator) against fixed reference statistics.

    A resample is a weight vector w = counts / n over the rows of X: mean w X, covariance
    n / (n - 1) (X^T diag(w) X - mu mu^T). The trace terms follow from per-row sums and the trace root from one
    small symmetric eigenproblem per resample (`_trace_roots`), so no 2048 x 2048 covariance is formed."""
    x = np.asarray(feats, np.float64)
    n = len(x)
    if n < 2 or resamples < 1:
        raise MetricsError(f"FID bootstrap over {n} sample(s) with {resamples} resamples; expected n >= 2, "
                           "resamples >= 1")
    mu_ref = np.asarray(mu_ref, np.float64)
    s2 = np.asarray(sigma_ref, np.float64)
    s2 = (s2 + s2.T) / 2
    rng = np.random.default_rng(seed)
    w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]) / n
    c = n / (n - 1)
    mu = w @ x
    tr1 = c * (w @ np.einsum("nd,nd->n", x, x) - np.einsum("bd,bd->b", mu, mu))
    diff = mu - mu_ref
    root = _trace_roots(x @ psd_factor(s2), w, c)
    return np.einsum("bd,bd->b", diff, diff) + tr1 + np.trace(s2) - 2 * root


def bootstrap_interval(point: float, boot: np.ndarray, level: float = 0.95, floor: float | None = 0.0):
    """Bias-corrected percentile interval: the bootstrap quantiles shifted by (point - bootstrap mean).

    Resampling with replacement repeats rows, which shifts the resampled FIDs up (FID-n is biased by the sample
    count); the spread of the bootstrap distribution is kept and its centre moved onto the measured value, so the
    interval describes the measured FID-n and contains it. `floor`: the metric's lower bound (FID >= 0)."""
    boot = np.asarray(boot, np.float64)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) + (point - boot.mean())
    if floor is not None:
        lo, hi = max(floor, lo), max(floor, hi)
    return float(lo), float(hi)


def kid_subset_values(feats1: np.ndarray, feats2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> np.ndarray:
    """Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 on each of `subsets` random
    subsets of size min(n1, n2, subset_size) (Binkowski et al. 2018; clean-fid's `kernel_distance` defaults,
    with a seeded generator) -> one value per subset."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    d, m = f1.shape[1], min(len(f1), len(f2), subset_size)
    if m < 2:
        raise MetricsError(f"KID needs at least 2 samples per set, got {len(f1)} and {len(f2)}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = f2[rng.choice(len(f2), m, replace=False)]
        y = f1[rng.choice(len(f1), m, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[i] = within - 2 * k_xy.sum() / m**2
    return values


def kid_subsets_differ(n1: int, n2: int, subset_size: int = 1000) -> bool:
    """Whether KID's random subsets are different sets of samples. Subsets of min(n1, n2, subset_size) rows
    drawn without replacement from a set of that very size are that whole set, every time: their spread is 0 and
    says nothing about the uncertainty (FID-200 against 200 reference images, KID's default size 1000)."""
    return min(n1, n2, subset_size) < min(n1, n2)


def kid_bootstrap(feats: np.ndarray, ref_feats: np.ndarray, resamples: int = 200, seed: int = 0) -> np.ndarray:
    """Unbiased MMD^2 (KID's cubic kernel, all rows) of `resamples` bootstrap resamples of the sample features
    (n rows drawn with replacement, seeded) against the fixed reference features -> one value per resample.

    With the resample's row counts c: sum over pairs of distinct draws k(y_a, y_b) = c^T K c - sum_i c_i K_ii,
    and the cross term c^T K_xy 1, so each resample costs two vector products with kernels formed once."""
    y, x = np.asarray(feats, np.float64), np.asarray(ref_feats, np.float64)
    n, r, d = len(y), len(x), y.shape[1]
    if n < 2 or r < 2 or resamples < 1:
        raise MetricsError(f"KID bootstrap over {n} sample(s) against {r} reference(s) with {resamples} resamples; "
                           "expected n >= 2, r >= 2, resamples >= 1")
    k_yy, k_xy, k_xx = ((a @ b.T / d + 1) ** 3 for a, b in ((y, y), (y, x), (x, x)))
    ref_term = (k_xx.sum() - np.trace(k_xx)) / (r * (r - 1))
    rng = np.random.default_rng(seed)
    c = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(np.float64)
    within = (np.einsum("bi,ij,bj->b", c, k_yy, c) - c @ np.diag(k_yy)) / (n * (n - 1))
    return ref_term + within - 2 * (c @ k_xy.sum(1)) / (n * r)


def kernel_inception_distance(feats1: np.ndarray, feats2: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> float:
    """KID: the mean of `kid_subset_values`."""
    return float(kid_subset_values(feats1, feats2, subsets, subset_size, seed).mean())


def subset_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """KID's own spread: the central `level` quantiles of its per-subset values."""
    lo, hi = np.quantile(np.asarray(values, np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` equal contiguous splits -> (mean, std)
    (Salimans et al. 2016; the ADM evaluator's 5,000-sample splits at 50k)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits or splits < 1:
        raise MetricsError(f"Inception Score: {p.shape} class probabilities for {splits} splits; "
                           "expected [N, classes] with N >= splits")
    scores = [np.exp(rel_entr(part, part.mean(0, keepdims=True)).sum(1).mean()) for part in np.array_split(p, splits)]
    return float(np.mean(scores)), float(np.std(scores))
