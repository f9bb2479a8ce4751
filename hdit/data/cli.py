"""`hdit data export`: write dataset images as .npz shards in the sample format (FID reference sets).

    hdit data export --dataset shapes --resolution 32 --n 500 --split train --out DIR

Shards are `shard-%05d.npz` (uint8 NHWC `images`, int64 `labels`) plus `meta.json`, written
atomically; rerunning skips shards that already exist. Images are the first N of the split in index
order (shapes: indices 0..N-1; folders: sorted file order).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hdit import io
from hdit.configs import DataConfig
from hdit.provenance import provenance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("export", help="export N images of a dataset as npz shards")
    p.add_argument("--dataset", required=True, help="shapes | imagenet | ffhq")
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--split", default="train")
    p.add_argument("--data", default=None, help="dataset folder (imagenet/ffhq)")
    p.add_argument("--seed", type=int, default=0, help="shapes generator seed (default 0 = the training data)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--out", required=True)


def export(dataset_name: str, resolution: int, n: int, out, split: str = "train", data_path=None, seed: int = 0,
           shard_size: int = 1000, progress: bool = True) -> Path:
    from hdit.data import build_dataset

    if n < 1 or shard_size < 1:
        raise ValueError(f"--n {n} / --shard-size {shard_size}; expected positive integers")
    ds = build_dataset(DataConfig(dataset_name, resolution), data_path, split=split, seed=seed)
    if n > len(ds):
        raise ValueError(f"--n {n} exceeds the {len(ds)} images of {dataset_name} ({split})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "dataset", "dataset": dataset_name, "resolution": resolution, "split": split, "n": n,
            "seed": seed, "data": str(data_path) if data_path else None, "shard_size": shard_size,
            "num_classes": ds.num_classes, "provenance": provenance()}
    io.write_json(out / "meta.json", meta)
    starts = range(0, n, shard_size)
    for k, start in enumerate(tqdm(starts, desc=f"export {dataset_name}", disable=not progress)):
        path = out / f"shard-{k:05d}.npz"
        if path.exists():
            continue
        images, labels = ds.get_uint8(np.arange(start, min(n, start + shard_size)))
        io.save_npz(path, images=images, labels=labels.astype(np.int64))
    return out


def main(args) -> int:
    from hdit.data import DataError

    if args.action != "export":
        print(f"error: unknown action {args.action!r}", file=sys.stderr)
        return 2
    try:
        export(args.dataset, args.resolution, args.n, args.out, args.split, args.data, args.seed, args.shard_size)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
