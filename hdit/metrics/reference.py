"""FID reference statistics of a training split, as the ADM evaluation suite the paper used computes them.

    hdit refstats --dataset imagenet --data /data/imagenet/train --resolution 128 --out imagenet-128.npz
    hdit refstats --dataset shapes --resolution 32 --n 200 --out shapes-32.npz

ADM compares samples against Inception statistics over the WHOLE training set, preprocessed exactly as
for training (ImageNet: ADM centre crop at the model's resolution; FFHQ: all 70k images). So the images
are streamed from the dataset itself (`hdit.data`: the image folder, or the same pixels from the split
`hdit data prepare` made, which shares the folder's cache key), in batches, through the Inception network on the
feature device, and only the moments (mu, the covariance) and a KID pool are kept: no exported copy of
1.28M images. `n` asks for a subset instead: seeded and class-stratified (`hdit.data.subset`), recorded.

- Cache: results are keyed by what determines them (the dataset's identity: its files' paths and sizes,
  or the procedural generator's parameters; the crop resolution; the selected indices; the resize mode;
  the Inception file's sha256) and stored once under `cache_dir/<key>.npz`. The sha256 of the exact
  uint8 pixels that went into the statistics is recorded beside them (`content_sha256`).
- Resumable: every `checkpoint_every` batches the running sums are written atomically to
  `cache_dir/<key>.partial.npz`; a killed job continues from there (same batch size: the sums are then
  bitwise those of an uninterrupted run). Other settings give another key, so nothing is ever mixed.
- Integrity: one process computes a key at a time (`hdit.runlock`, lock `.<key>.lock`), removing the
  temporaries a killed one left; a damaged cache entry or partial file (unreadable, or not matching the
  checksum stored in it) is recomputed with a warning. A damaged `--ref` statistics file is an error naming it.
- Output: `--out X.npz` and its JSON record `X.json` (so --out must end in .npz: the record never replaces the
  statistics), both checked for writability before any work. If --out cannot be written the statistics stay in
  the cache entry (the same command then copies them in seconds); if the cache cannot be written, --out is.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hdit.integrity import DamagedFileError, load_npz
from hdit.devices import resolve_device
from hdit.errors import error_text
from hdit.io import WriteError, check_writable, remove_stale_temporaries, save_npz, write_json
from hdit.metrics.images import MetricsError
from hdit.metrics.inception import FEATURE_DIM, MODES, ExtractorError, InceptionNet, check_mode, clean_resizer
from hdit.metrics.scores import Moments
from hdit.provenance import provenance
from hdit.runlock import RunLock

STATS_VERSION = 2
KID_POOL = 10_000  # reference features kept for KID (a seeded random subset when the set is larger)
DEFAULT_CACHE_DIR = Path("results/cache/fid-stats")


@dataclass(frozen=True)
class ReferenceSpec:
    """Which images: a dataset split at a resolution, all of it (n None, the ADM protocol) or a subset."""
    dataset: str
    resolution: int
    data: str | None = None  # folder of imagenet / ffhq; None for the procedural `shapes`
    split: str = "train"
    n: int | None = None
    seed: int = 0  # subset seed (unused for the whole split)


def open_reference(spec: ReferenceSpec):
    """-> (dataset, sorted indices, selection record)."""
    from hdit.configs import DataConfig
    from hdit.data import build_dataset
    from hdit.data.subset import select_subset, selection_digest

    dataset = build_dataset(DataConfig(spec.dataset, spec.resolution), spec.data, split=spec.split)
    indices, selection = select_subset(dataset.labels(), len(dataset), spec.n, spec.seed)
    return dataset, indices, {**selection, "indices_sha256": selection_digest(indices)}


def reference_key(identity: dict, selection: dict, mode: str, extractor_sha: str) -> str:
    fields = {"version": STATS_VERSION, "identity": identity, "indices": selection["indices_sha256"],
              "mode": mode, "extractor": extractor_sha}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return f"{identity.get('dataset', 'data')}-{identity['resolution']}-{mode}-{digest}"


class _Batches(torch.utils.data.Dataset):
    """Batch b of the selection -> (float NCHW in [0, 255], ready for the mode; sha256 of its uint8 pixels).
    Decoding and cropping run in DataLoader workers; the legacy-TF resize runs on the feature device."""

    def __init__(self, dataset, indices: np.ndarray, batch_size: int, mode: str):
        self.dataset, self.indices, self.batch_size = dataset, indices, batch_size
        self.resize = clean_resizer() if mode == "clean" else None

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __getitem__(self, b: int):
        images, _ = self.dataset.get_uint8(self.indices[b * self.batch_size:(b + 1) * self.batch_size])
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
        if self.resize is not None:
            images = np.stack([self.resize(img) for img in images])
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float(), digest


class _Accumulator:
    """Running moments, the KID pool (features at seeded positions) and the per-batch pixel digests."""

    def __init__(self, n: int, seed: int):
        self.moments, self.pool, self.digests, self.batches = Moments(FEATURE_DIM), [], [], 0
        self.keep = np.sort(np.random.default_rng(seed).choice(n, min(n, KID_POOL), replace=False))

    def update(self, feats: np.ndarray, digest: str) -> None:
        start = self.moments.n
        self.moments.update(feats)
        sel = self.keep[(self.keep >= start) & (self.keep < start + len(feats))] - start
        self.pool.append(feats[sel].astype(np.float32))
        self.digests.append(digest)
        self.batches += 1

    def state(self) -> dict:
        m = self.moments
        return {"sum": m.sum, "outer": m.outer, "count": np.int64(m.n), "batches": np.int64(self.batches),
                "pool": np.concatenate(self.pool or [np.zeros((0, FEATURE_DIM), np.float32)]),
                "digests": np.array(self.digests)}

    def load(self, z) -> None:
        self.moments.sum, self.moments.outer, self.moments.n = z["sum"], z["outer"], int(z["count"])
        self.pool, self.digests, self.batches = [z["pool"]], [str(d) for d in z["digests"]], int(z["batches"])

    def content_sha256(self) -> str:
        return hashlib.sha256("".join(self.digests).encode()).hexdigest()


def _resume(acc: _Accumulator, partial: Path, batch_size: int) -> None:
    """Continue a killed computation of the same key and batch size; anything else is started over."""
    if not partial.is_file():
        return
    keys = ("batch_size", "sum", "outer", "count", "batches", "pool", "digests")
    try:
        z = load_npz(partial, keys, "it is deleted and the statistics are computed from the start")
    except DamagedFileError as e:  # a damaged partial file only costs the work it held
        warnings.warn(str(e), stacklevel=2)
        partial.unlink(missing_ok=True)
        return
    if int(z["batch_size"]) == batch_size:
        acc.load(z)


def _stream(spec, dataset, indices, net, mode, device, batch_size, workers, partial, checkpoint_every, verbose):
    acc = _Accumulator(len(indices), spec.seed)
    _resume(acc, partial, batch_size)
    batches = _Batches(dataset, indices, batch_size, mode)
    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(acc.batches, len(batches)),
                                         num_workers=workers, pin_memory=cuda)
    net.to(device)
    bar = tqdm(total=len(batches), initial=acc.batches, desc=f"reference {spec.dataset}-{spec.resolution}",
               unit="batch", disable=not verbose)
    with torch.inference_mode():
        for x, digest in loader:
            acc.update(net.features(x.to(device, non_blocking=True), mode).float().cpu().numpy(), digest)
            bar.update(1)
            if acc.batches % checkpoint_every == 0 and acc.batches < len(batches):
                save_npz(partial, batch_size=np.int64(batch_size), **acc.state())
    bar.close()
    return acc


def dataset_reference_stats(spec: ReferenceSpec, net: InceptionNet, mode: str, cache_dir=DEFAULT_CACHE_DIR,
                            device=None, batch_size: int | None = None, workers: int | None = None,
                            checkpoint_every: int = 100, verbose: bool = True) -> dict:
    """Statistics of `spec` (cached; resumable) -> {mu, sigma, kid_feats, n, meta}."""
    check_mode(mode)
    dataset, indices, selection = open_reference(spec)
    if len(indices) < 2:
        raise MetricsError(f"reference set of {len(indices)} image(s); FID needs at least 2")
    identity = dataset.identity()
    key = reference_key(identity, selection, mode, net.sha256)
    cache_dir = Path(cache_dir)
    path, partial = cache_dir / f"{key}.npz", cache_dir / f"{key}.partial.npz"
    with RunLock(cache_dir, f"hdit refstats ({key})", name=f".{key}.lock"):
        remove_stale_temporaries(cache_dir, prefix=f".{key}.")
        cached = _cached(path)
        if cached is not None:
            return cached
        device = str(resolve_device(device))
        cuda = device.startswith("cuda")
        batch_size = batch_size or (128 if cuda else 32)
        workers = (0 if identity["dataset"] == "shapes" else 8 if cuda else 1) if workers is None else workers
        start = time.perf_counter()
        acc = _stream(spec, dataset, indices, net, mode, device, batch_size, workers, partial, checkpoint_every,
                      verbose)
        mu, sigma = acc.moments.mean_cov()
        meta = {"version": STATS_VERSION, "key": key, "spec": asdict(spec), "identity": identity,
                "selection": selection, "n": int(acc.moments.n), "resolution": [spec.resolution, spec.resolution],
                "mode": mode, "extractor_sha256": net.sha256, "content_sha256": acc.content_sha256(),
                "batch_size": batch_size, "seconds": round(time.perf_counter() - start, 2),
                "provenance": provenance(device)}
        stats = {"mu": mu, "sigma": sigma, "kid_feats": np.concatenate(acc.pool).astype(np.float32), "n": meta["n"],
                 "meta": meta}
        try:
            write_stats(path, stats)
        except WriteError as e:  # --out may still be writable: the caller tries it, and reports both
            return {**stats, "cached": False, "cache_path": None, "cache_error": str(e)}
        partial.unlink(missing_ok=True)
    return {**stats, "cached": False, "cache_path": str(path)}


def _cached(path: Path) -> dict | None:
    """The cache entry at `path`, or None (absent; a damaged one is deleted with a warning)."""
    if not path.is_file():
        return None
    try:
        return {**load_stats(path, fix="it is deleted and recomputed"), "cached": True, "cache_path": str(path)}
    except (DamagedFileError, MetricsError) as e:
        warnings.warn(f"damaged cache entry: {e}", stacklevel=3)
        path.unlink(missing_ok=True)
        return None


# ----------------------------------------------------------------------------- the statistics file

def write_stats(path, stats: dict) -> None:
    save_npz(path, mu=stats["mu"], sigma=stats["sigma"], kid_feats=stats["kid_feats"], n=np.int64(stats["n"]),
             meta=np.array(json.dumps(stats["meta"], default=str)))


REFSTATS_FIX = "delete it and recompute it with `hdit refstats`"


def load_stats(path, fix: str = REFSTATS_FIX) -> dict:
    """A statistics file written by `write_stats`, checked: checksum, shapes, finiteness, its own record."""
    path = Path(path)
    z = load_npz(path, ("mu", "sigma", "kid_feats", "n", "meta"), fix, "FID statistics file")
    stats = {k: z[k] for k in ("mu", "sigma", "kid_feats")}
    try:
        stats["n"], meta = int(z["n"]), json.loads(str(z["meta"]))
    except (TypeError, ValueError) as e:
        raise MetricsError(f"{path}: not a readable FID statistics file ({e}); {fix}") from None
    d = FEATURE_DIM
    ok = (stats["mu"].shape == (d,) and stats["sigma"].shape == (d, d) and stats["kid_feats"].ndim == 2
          and stats["kid_feats"].shape[1] == d and meta.get("n") == stats["n"])
    if not ok or not all(np.isfinite(stats[k]).all() for k in ("mu", "sigma")):
        raise MetricsError(f"{path}: FID statistics with wrong shapes or non-finite values; {fix}")
    return {**stats, "meta": meta}


# ----------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="shapes | imagenet | ffhq")
    p.add_argument("--data", default=None, help="dataset folder (imagenet: class sub-folders; ffhq: images), or "
                                                "its split prepared at --resolution by `hdit data prepare`")
    p.add_argument("--resolution", type=int, required=True, help="crop resolution (the model's)")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=None,
                   help="images in a seeded class-stratified subset (default: the whole split, as ADM)")
    p.add_argument("--seed", type=int, default=0, help="subset seed")
    p.add_argument("--mode", choices=MODES, default="legacy_tensorflow", help="clean-fid resize mode")
    p.add_argument("--device", default=None, help="feature device (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="decoding workers (default: 8 on GPU, 1 on CPU)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    p.add_argument("--checkpoint-every", type=int, default=100, help="batches between resumable partial saves")
    p.add_argument("--out", type=Path, required=True, help="statistics file (.npz) to write")
    p.add_argument("--quiet", action="store_true")


def _where_kept(stats: dict) -> str:
    """What is left of a computation whose --out could not be written (nothing finished is lost silently)."""
    if stats.get("cache_path"):
        return (f"The finished statistics are kept in the cache entry {stats['cache_path']}: the same command copies "
                "them from there in seconds once it can write")
    return (f"The cache could not be written either ({stats.get('cache_error')}): the resumable partial sums of the "
            "last checkpoint (--checkpoint-every) are kept in the cache directory, and the same command resumes "
            "from them")


def record_path(out: Path) -> Path:
    """The JSON record written beside the statistics file `X.npz`: `X.json` (so --out must end in .npz: the
    record can never replace the statistics)."""
    if out.suffix != ".npz":
        raise MetricsError(f"--out {out}: expected a statistics file name ending in .npz (its JSON record is "
                           f"written beside it as {out.with_suffix('.json').name})")
    return out.with_suffix(".json")


def main(args) -> int:
    from hdit.data import DataError
    from hdit.metrics.inception import load_inception

    for name in ("n", "batch_size", "checkpoint_every", "resolution"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"hdit refstats: error: --{name.replace('_', '-')} {v}; expected a positive integer",
                  file=sys.stderr)
            return 2
    try:
        record = record_path(args.out)
        for path in (args.out, record):
            check_writable(path)  # before hours of work
        spec = ReferenceSpec(args.dataset, args.resolution, args.data, args.split, args.n, args.seed)
        device = str(resolve_device(args.device))
        stats = dataset_reference_stats(spec, load_inception(device), args.mode, args.cache_dir, device,
                                        args.batch_size, args.workers, args.checkpoint_every, not args.quiet)
    except (DataError, MetricsError, ExtractorError, ValueError) as e:
        print(f"hdit refstats: error: {error_text(e)}", file=sys.stderr)
        return 2
    try:
        write_stats(args.out, stats)
        write_json(record, {**stats["meta"], "cached": stats["cached"]})
    except WriteError as e:
        print(f"hdit refstats: error: {e}. {_where_kept(stats)}", file=sys.stderr)
        return 2
    if stats.get("cache_error"):
        print(f"hdit refstats: warning: {stats['cache_error']}; the statistics were written to {args.out} only",
              file=sys.stderr)
    sel = stats["meta"]["selection"]
    print(f"{args.out}: {stats['n']} images ({sel['how']}), key {stats['meta']['key']}"
          f"{' (from the cache)' if stats['cached'] else ''}")
    return 0
