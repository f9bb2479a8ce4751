"""Reference statistics (mu, sigma and a KID feature pool) of a reference image set, computed once and
cached atomically under `cache_dir`, keyed by content hash + resolution + mode + extractor sha256.
A damaged cache entry (unreadable, or not matching its checksum) is recomputed, with a warning; one that cannot be
written (no space, ...) is skipped with a warning."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from hdit.integrity import DamagedFileError, load_npz
from hdit.io import WriteError, save_npz
from hdit.metrics.features import iter_features, open_images
from hdit.metrics.images import MetricsError, content_hash
from hdit.metrics.inception import FEATURE_DIM, InceptionNet
from hdit.metrics.scores import Moments

DEFAULT_CACHE_DIR = Path("results/cache/fid-stats")
STATS_VERSION = 1
KID_POOL = 10_000  # reference features kept for KID (a seeded random subset when the set is larger)


def stats_key(content_sha: str, resolution: tuple[int, int], mode: str, extractor_sha: str) -> str:
    fields = {"version": STATS_VERSION, "content": content_sha, "resolution": list(resolution),
              "mode": mode, "extractor": extractor_sha}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return f"{mode}-{resolution[0]}x{resolution[1]}-{digest}"


def reference_stats(ref_dir, net: InceptionNet, mode: str, cache_dir=DEFAULT_CACHE_DIR, device=None,
                    batch_size=None, workers=None, kid_pool: int = KID_POOL, seed: int = 0,
                    verbose: bool = True) -> dict:
    """-> {mu, sigma, kid_feats, n, key, path, resolution, content_sha256, cached}."""
    images = open_images(ref_dir, mode)
    if len(images) < 2:
        raise MetricsError(f"{ref_dir}: {len(images)} reference image(s); expected at least 2")
    resolution = tuple(images.shape[:2])
    sha = content_hash(images, memo_dir=cache_dir)
    key = stats_key(sha, resolution, mode, net.sha256)
    path = Path(cache_dir) / f"{key}.npz"
    info = {"key": key, "path": str(path), "resolution": list(resolution), "content_sha256": sha}
    if path.is_file():
        try:
            z = load_npz(path, ("mu", "sigma", "kid_feats", "n"), "it is recomputed now")
            return {**info, "mu": z["mu"], "sigma": z["sigma"], "kid_feats": z["kid_feats"], "n": int(z["n"]),
                    "cached": True}
        except DamagedFileError as e:
            warnings.warn(f"damaged cache entry: {e}", stacklevel=2)
    n = len(images)
    keep = np.sort(np.random.default_rng(seed).choice(n, min(n, kid_pool), replace=False))
    moments, pool, start = Moments(FEATURE_DIM), [], 0
    for feats in iter_features(images, net, mode, device, batch_size, workers, desc=f"reference {key}",
                               verbose=verbose):
        moments.update(feats)
        sel = keep[(keep >= start) & (keep < start + len(feats))] - start
        pool.append(feats[sel])
        start += len(feats)
    mu, sigma = moments.mean_cov()
    kid_feats = np.concatenate(pool).astype(np.float32)
    meta = json.dumps({**info, "ref_dir": str(ref_dir), "n": n, "mode": mode, "extractor_sha256": net.sha256})
    try:
        save_npz(path, mu=mu, sigma=sigma, kid_feats=kid_feats, n=np.int64(n), meta=np.array(meta))
    except WriteError as e:  # only a cache: the statistics are used now and computed again next time
        warnings.warn(f"the reference statistics are not cached: {e}", stacklevel=2)
    return {**info, "mu": mu, "sigma": sigma, "kid_feats": kid_feats, "n": n, "cached": False}
