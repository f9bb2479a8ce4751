"""`compute_metrics`: FID / KID / IS of a sample directory (the library call behind `hdit fid` and the DAG)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hdit.devices import resolve_device
from hdit.metrics.features import iter_features, open_images
from hdit.metrics.images import MetricsError
from hdit.metrics.inception import FEATURE_DIM, ExtractorError, InceptionNet, load_inception
from hdit.metrics.reference import load_stats
from hdit.metrics.refstats import DEFAULT_CACHE_DIR, reference_stats
from hdit.metrics.scores import (Moments, bootstrap_interval, fid_bootstrap, fid_label, frechet_distance,
                                 inception_score as is_score, kid_bootstrap, kid_subset_values,
                                 kid_subsets_differ, subset_interval)
from hdit.provenance import provenance

# The paper's numbers come from the ADM evaluator, which feeds images to the TF graph at their own size
# and lets its ResizeBilinear make them 299x299: clean-fid's `legacy_tensorflow` (docs/EVALUATION.md).
DEFAULT_MODE = "legacy_tensorflow"


def _samples_meta(images) -> dict | None:
    """The sample set's meta.json (checked with its shards when the set was opened), without the shard list."""
    return None if images.record is None else {k: v for k, v in images.record.items() if k != "shards"}


def _reference(ref, net, mode, cache_dir, device, batch_size, workers, seed, verbose) -> dict:
    """Reference statistics from a statistics file (`hdit refstats`: a training split, ADM-style) or from a
    directory of reference images (computed once and cached)."""
    if not Path(ref).is_file():
        return reference_stats(ref, net, mode, cache_dir, device, batch_size, workers, seed=seed, verbose=verbose)
    stats = load_stats(ref)
    meta = stats["meta"]
    for what, theirs, ours in (("mode", meta["mode"], mode), ("Inception sha256", meta["extractor_sha256"], net.sha256)):
        if theirs != ours:
            raise MetricsError(f"{ref}: reference statistics computed with {what} {theirs!r}; this FID uses {ours!r} "
                               "(recompute them with `hdit refstats` under the same settings)")
    return {**stats, "key": meta["key"], "path": str(ref), "resolution": meta["resolution"], "cached": True,
            "content_sha256": meta["content_sha256"], "selection": meta["selection"]}


def _features(images, net, mode, device, batch_size, workers, name, verbose):
    """(streamed moments, all feature rows [N, 2048], seconds) of a sample set."""
    start, moments, feats = time.perf_counter(), Moments(FEATURE_DIM), []
    for f in iter_features(images, net, mode, device, batch_size, workers, desc=f"samples {name}", verbose=verbose):
        moments.update(f)
        feats.append(f)
    return moments, np.concatenate(feats), time.perf_counter() - start


def _kid_scores(feats: np.ndarray, ref_feats: np.ndarray, subsets: int, subset_size: int, resamples: int,
                seed: int) -> dict:
    """KID (mean over its random subsets) and its 95% interval: the subsets' spread, or, where every subset is the
    whole sample set (n <= subset_size) and that spread is exactly 0, a bootstrap over the samples as for FID."""
    values = kid_subset_values(feats, ref_feats, subsets, subset_size, seed)
    kid = float(values.mean())
    if kid_subsets_differ(len(feats), len(ref_feats), subset_size):
        interval, how = subset_interval(values), "subset spread"
    else:  # KID may be negative: no floor
        boot = kid_bootstrap(feats, ref_feats, resamples, seed)
        interval, how = bootstrap_interval(kid, boot, floor=None), "bootstrap"
    return {"kid": kid, "kid_ci95": list(interval), "kid_interval": how, "kid_std": float(values.std()),
            "kid_subsets": subsets, "kid_subset_size": min(len(feats), len(ref_feats), subset_size)}


def _scores(moments: Moments, feats: np.ndarray, ref: dict, kid_subsets: int, kid_subset_size: int,
            fid_resamples: int, seed: int) -> dict:
    """FID and KID against the reference statistics, each with its 95% interval."""
    mu, sigma = moments.mean_cov()
    fid = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    start = time.perf_counter()
    fid_boot = fid_bootstrap(feats, ref["mu"], ref["sigma"], fid_resamples, seed)
    return {"fid": fid, "fid_ci95": list(bootstrap_interval(fid, fid_boot)),
            "fid_bootstrap": {"resamples": fid_resamples, "seed": seed, "mean": float(fid_boot.mean()),
                              "std": float(fid_boot.std()), "seconds": round(time.perf_counter() - start, 3),
                              "method": "sample features resampled with replacement; percentile interval "
                                        "re-centred on the measured FID (bias-corrected)"},
            **_kid_scores(feats, ref["kid_feats"], kid_subsets, kid_subset_size, fid_resamples, seed)}


def _scored_images(images, samples_dir: Path, n: int | None, first: int | None):
    """The samples to score: all of them (exactly `n` if given) or the first `first`."""
    held = len(images)
    if n is not None and n != held:
        raise MetricsError(f"n={n} but {samples_dir} holds {held} samples; expected exactly n samples")
    if first is not None:
        if not 1 <= first <= held:
            raise MetricsError(f"first={first} but {samples_dir} holds {held} samples; expected 1 <= first <= {held}")
        images = torch.utils.data.Subset(images, range(first))
    if len(images) < 2:
        raise MetricsError(f"{samples_dir}: {len(images)} sample(s); FID needs at least 2")
    return images


def _is_unavailable(net: InceptionNet, inception_score: bool | str) -> str | None:
    """Why the Inception Score cannot be computed with `net` (None: it can, or it was not asked for). Checked
    before any work: required (True) and unavailable raises; "if-available" records the reason."""
    if not inception_score or net.classifier is not None:
        return None
    try:
        net.logits(torch.zeros(1, FEATURE_DIM))
    except ExtractorError as e:
        if inception_score != "if-available":
            raise
        return str(e)
    return None


def compute_metrics(samples_dir, ref_dir=None, n: int | None = None, mode: str = DEFAULT_MODE,
                    inception_score: bool | str = False, device=None, cache_dir=DEFAULT_CACHE_DIR,
                    batch_size: int | None = None, workers: int | None = None, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, is_splits: int = 10, seed: int = 0, fid_resamples: int = 200,
                    net: InceptionNet | None = None, verbose: bool = True, first: int | None = None) -> dict:
    """FID + KID against the reference set `ref_dir` (stats cached) and/or the Inception Score of exactly
    `n` samples (None: all samples in the directory) -> one JSON-able dict.

    Every FID and KID carries a 95% interval (`fid_ci95`, `kid_ci95`): FID from `fid_resamples` bootstrap
    resamples of the sample features (seeded by `seed`), KID from the spread of its own subsets, or, where its
    subsets are all the whole sample set (n <= kid_subset_size), from the same bootstrap (`kid_interval` says
    which).

    first: score only the first `first` samples of the directory (which must hold at least that many), e.g.
    FID-5k on the first 5k images of a 50k set.

    inception_score: True = required (error without a classifier head); "if-available" = computed when the
    Inception file has its 1008-way output layer, else recorded as unavailable (`is_mean` None + reason)."""
    samples_dir = Path(samples_dir)
    if ref_dir is None and not inception_score:
        raise MetricsError("nothing to compute: give a reference directory (FID/KID) and/or inception_score=True")
    device = str(resolve_device(device))
    all_images = open_images(samples_dir, mode)
    held, shape = len(all_images), all_images.shape
    images = _scored_images(all_images, samples_dir, n, first)
    count = len(images)
    net = net or load_inception(device)
    is_unavailable = _is_unavailable(net, inception_score)
    inception_score = inception_score and is_unavailable is None
    result = {"label": fid_label(count), "n": count, "mode": mode, "extractor_sha256": net.sha256,
              "extractor_path": str(net.path), "samples_dir": str(samples_dir),
              "samples_held": held, "resolution": list(shape[:2])}
    ref = None
    if ref_dir is not None:
        ref = _reference(ref_dir, net, mode, cache_dir, device, batch_size, workers, seed, verbose)
        if ref["resolution"] != result["resolution"]:
            raise MetricsError(f"samples are {result['resolution']} px but the reference set {ref_dir} is "
                               f"{ref['resolution']} px; expected the same resolution")
    moments, feats, seconds = _features(images, net, mode, device, batch_size, workers, samples_dir.name, verbose)
    result.update(feature_seconds=round(seconds, 3), images_per_second=round(count / seconds, 3))
    if ref is not None:
        result.update(_scores(moments, feats, ref, kid_subsets, kid_subset_size, fid_resamples, seed))
        result.update(ref_dir=str(ref_dir), ref_n=ref["n"], ref_stats_key=ref["key"], ref_stats_path=ref["path"],
                      ref_stats_cached=ref["cached"], ref_content_sha256=ref["content_sha256"],
                      ref_selection=ref.get("selection"))
    if inception_score:
        probs = torch.softmax(net.logits(torch.from_numpy(feats)), dim=1).numpy()
        result["is_mean"], result["is_std"] = is_score(probs, is_splits)
        result["is_splits"] = is_splits
    elif is_unavailable:
        result.update(is_mean=None, is_std=None, is_unavailable=is_unavailable)
    result["samples_meta"] = _samples_meta(all_images)
    result["provenance"] = provenance(device)
    return result
