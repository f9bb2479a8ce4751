"""95% intervals of FID (bootstrap over the sample features) and KID (spread of its subsets), on synthetic
features: exact against the direct computation, deterministic, containing the point value, and the overlap
note the tables derive from them."""
from __future__ import annotations

import numpy as np
import pytest

from hdit.metrics.scores import (Moments, _trace_roots, bootstrap_interval, fid_bootstrap, frechet_distance,
                                 kernel_inception_distance, kid_bootstrap, kid_subset_values, kid_subsets_differ,
                                 psd_factor, subset_interval, trace_sqrt_product)

D = 96  # feature dimension (Inception's is 2048; the algebra does not depend on it)


def stats(x):
    m = Moments(x.shape[1])
    m.update(x)
    return m.mean_cov()


@pytest.fixture(scope="module")
def ref():
    """Reference features and their statistics (a rank-deficient covariance: 80 vectors in 96 dimensions)."""
    x = np.random.default_rng(0).normal(size=(80, D))
    return x, *stats(x)


def samples(n, shift=0.3, seed=1):
    return np.random.default_rng(seed).normal(size=(n, D)) + shift


@pytest.mark.parametrize("n", [40, 150])  # n below and above the reference rank: both eigenproblem forms
def test_unit_weights_give_the_point_fid(ref, n):
    _, mu_r, s_r = ref
    x = samples(n)
    roots = _trace_roots(x @ psd_factor(s_r), np.full((1, n), 1 / n), n / (n - 1))
    assert roots[0] == pytest.approx(trace_sqrt_product(stats(x)[1], s_r), rel=1e-6)


def test_bootstrap_fids_equal_the_fid_of_each_resampled_set(ref):
    """The vectorised bootstrap is the FID of the resampled rows, recomputed from scratch."""
    _, mu_r, s_r = ref
    x, seed = samples(50), 3
    boot = fid_bootstrap(x, mu_r, s_r, resamples=4, seed=seed)
    rng = np.random.default_rng(seed)
    direct = [frechet_distance(*stats(x[rng.integers(0, 50, 50)]), mu_r, s_r) for _ in range(4)]
    np.testing.assert_allclose(boot, direct, rtol=1e-6)


def test_interval_contains_the_point_fid_and_is_deterministic(ref):
    _, mu_r, s_r = ref
    x = samples(60)
    fid = frechet_distance(*stats(x), mu_r, s_r)
    boot = fid_bootstrap(x, mu_r, s_r, resamples=200, seed=0)
    lo, hi = bootstrap_interval(fid, boot)
    assert lo < fid < hi
    np.testing.assert_array_equal(boot, fid_bootstrap(x, mu_r, s_r, resamples=200, seed=0))
    assert not np.array_equal(boot, fid_bootstrap(x, mu_r, s_r, resamples=200, seed=1))
    # golden: pins the resampling scheme and the re-centring (any change to either moves these)
    assert (lo, hi) == pytest.approx((72.1281, 84.7263), abs=1e-3)


def test_identical_feature_sets_give_an_interval_at_zero(ref):
    """Samples equal to the reference: FID 0, the interval starts at FID's bound 0 and stays small."""
    x, mu_r, s_r = ref
    fid = frechet_distance(*stats(x), mu_r, s_r)
    assert abs(fid) < 1e-6
    lo, hi = bootstrap_interval(fid, fid_bootstrap(x, mu_r, s_r, resamples=200, seed=0))
    far = frechet_distance(*stats(samples(80)), mu_r, s_r)
    assert lo == 0.0 and 0 < hi < 0.2 * far


def test_interval_narrows_with_more_samples(ref):
    _, mu_r, s_r = ref
    widths = []
    for n in (30, 240):
        x = samples(n, seed=5)
        lo, hi = bootstrap_interval(frechet_distance(*stats(x), mu_r, s_r), fid_bootstrap(x, mu_r, s_r, 100, 0))
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]


def test_kid_interval_is_its_subset_spread(ref):
    x, _, _ = ref
    y = samples(80)
    values = kid_subset_values(y, x, subsets=50, subset_size=40, seed=0)
    assert values.mean() == pytest.approx(kernel_inception_distance(y, x, subsets=50, subset_size=40, seed=0))
    lo, hi = subset_interval(values)
    assert lo < values.mean() < hi
    assert lo == pytest.approx(np.quantile(values, 0.025)) and hi == pytest.approx(np.quantile(values, 0.975))
    np.testing.assert_array_equal(values, kid_subset_values(y, x, subsets=50, subset_size=40, seed=0))


def _mmd2_unbiased(y, x):
    """KID's unbiased MMD^2 with the cubic kernel, written out over index pairs (slow, obvious)."""
    d, n, r = y.shape[1], len(y), len(x)
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    off = lambda m: m.sum() - np.trace(m)  # noqa: E731
    return off(k(x, x)) / (r * (r - 1)) + off(k(y, y)) / (n * (n - 1)) - 2 * k(y, x).sum() / (n * r)


def test_kid_bootstrap_is_the_mmd_of_each_resample(ref):
    """Each bootstrap value is the unbiased MMD^2 of the resampled rows (repeats included) against the reference,
    drawn from the same seeded generator; without repeats it is the whole-set KID (= KID when every subset is
    the whole set)."""
    x, _, _ = ref
    x = x[:60]
    y = samples(40)
    boot = kid_bootstrap(y, x, resamples=4, seed=3)
    rng = np.random.default_rng(3)
    expected = [_mmd2_unbiased(y[rng.integers(0, len(y), len(y))], x) for _ in range(4)]
    np.testing.assert_allclose(boot, expected, rtol=1e-9)
    same = kid_subset_values(y, x[:40], subsets=3, subset_size=1000, seed=0)
    np.testing.assert_allclose(same, _mmd2_unbiased(y, x[:40]), rtol=1e-9)  # every subset: the whole set


def test_kid_interval_is_never_a_point_when_subsets_are_the_whole_set():
    """FID-200 against 200 reference images with KID's subset size 1000: every subset is the whole set, so their
    spread is exactly 0 -- a zero-width "interval" that would call every row difference resolved. The bootstrap
    takes over there, and its width falls with n like FID's."""
    x = np.random.default_rng(5).normal(size=(200, D))
    assert not kid_subsets_differ(200, 200) and not kid_subsets_differ(200, 5000) and kid_subsets_differ(5000, 5000)
    y = samples(200)
    values = kid_subset_values(y, x[:200], subsets=20, subset_size=1000, seed=0)
    assert np.ptp(values) < 1e-12  # the degenerate spread
    widths = []
    for n in (50, 200):
        y = samples(n)
        kid = kernel_inception_distance(y, x[:n], subsets=5, subset_size=1000)
        lo, hi = bootstrap_interval(kid, kid_bootstrap(y, x[:n], resamples=200, seed=0), floor=None)
        assert lo < kid < hi
        widths.append(hi - lo)
    assert widths[1] < 0.7 * widths[0]


def test_bad_bootstrap_arguments():
    from hdit.metrics.images import MetricsError

    with pytest.raises(MetricsError, match="resamples"):
        fid_bootstrap(np.zeros((1, 3)), np.zeros(3), np.eye(3))
