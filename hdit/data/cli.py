"""`hdit data export | prepare | synth`. `prepare` (the training split preprocessed once for training and FID
statistics) is `hdit.data.prepare`; `synth` (generated stand-in folders) is `hdit.data.synth`.

`hdit data export`: write dataset images as .npz shards in the sample format (a reference image set).

    hdit data export --dataset imagenet --data /data/imagenet/train --resolution 128 --n 10000 --out DIR

The images are the whole split or, with --n, a seeded class-stratified random subset
(`hdit.data.subset`): never the first N files of a sorted listing, which on ImageNet would be a few dozen
classes. FID statistics need no export (`hdit refstats` streams the training split itself); this command
is for looking at, sharing or re-scoring a fixed reference set.

Shards are `shard-%05d.npz` (uint8 NHWC `images`, int64 `labels`) plus `meta.json` (settings, selection
record, every shard's name, count and checksum), written atomically with their checksums (`hdit.integrity`);
meta.json is written last (`.export.json` holds the settings until then), so a stopped export is no set.
A rerun with the same settings completes
the missing shards; a rerun with other settings into the same folder is refused (never a mix of two exports).
One process writes a folder at a time (`hdit.runlock`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hdit import io
from hdit.configs import DataConfig
from hdit.errors import error_text
from hdit.integrity import read_record, write_record, write_set_record
from hdit.provenance import provenance
from hdit.runlock import RunLock

SETTINGS = ("dataset", "resolution", "split", "n", "seed", "data", "shard_size", "selection")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("export", help="export a dataset split (or a stratified subset) as npz shards")
    p.add_argument("--dataset", required=True, help="shapes | imagenet | ffhq")
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--n", type=int, default=None, help="images (default: the whole split)")
    p.add_argument("--split", default="train")
    p.add_argument("--data", default=None, help="dataset folder (imagenet/ffhq)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset selection")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--out", required=True)
    q = sub.add_parser("prepare", help="the training split at the model's resolution, preprocessed once (ADM crop) "
                                       "for `hdit train` / `hdit refstats --data DIR`; resumable")
    q.add_argument("--dataset", required=True, help="imagenet | ffhq")
    q.add_argument("--data", required=True, help="the dataset folder (imagenet: class sub-folders; ffhq: images)")
    q.add_argument("--resolution", type=int, required=True, help="the model's resolution")
    q.add_argument("--split", default="train")
    q.add_argument("--out", required=True, help="the prepared folder to write (or finish, or verify)")
    q.add_argument("--workers", type=int, default=None, help="processes (default: the cores this job may use)")
    q.add_argument("--chunk-images", type=int, default=None, help="images per chunk (default: ~256 MiB of pixels)")
    q.add_argument("--replace", action="store_true",
                   help="--out holds a preparation of other settings or a changed source: delete it, prepare again")
    q.add_argument("--quiet", action="store_true")
    s = sub.add_parser("synth", help="write generated ImageNet-/FFHQ-layout folders (offline paper-smoke runs)")
    s.add_argument("--layout", required=True, choices=("imagenet", "ffhq"))
    s.add_argument("--classes", type=int, default=1000, help="imagenet: class folders")
    s.add_argument("--per-class", type=int, default=1, help="imagenet: images per class")
    s.add_argument("--n", type=int, default=6, help="ffhq: images")
    s.add_argument("--size", default="96x72", help="WIDTHxHEIGHT of every image")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)


PARTIAL = ".export.json"  # the settings of an unfinished export; meta.json (with its shard list) comes last


def _check_previous(out: Path, meta: dict) -> None:
    """An existing export in `out` (finished, or stopped: `.export.json`) must have been made with the same
    settings."""
    path = next((out / n for n in ("meta.json", PARTIAL) if (out / n).exists()), None)
    if path is None:
        if any(out.glob("shard-*.npz")):
            raise ValueError(f"{out} holds shards but no meta.json (an export of unknown settings); "
                             "remove the folder or use another --out")
        return
    old = read_record(path, f"the settings of the export in {out} cannot be read back: remove the folder and export "
                            "again")
    diff = [k for k in SETTINGS if old.get(k) != meta[k]]
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {meta[k]!r}" for k in diff)
        raise ValueError(f"{out} holds an export made with other settings ({changes}); remove the folder or use "
                         "another --out")


def export(dataset_name: str, resolution: int, n: int | None, out, split: str = "train", data_path=None,
           seed: int = 0, shard_size: int = 1000, progress: bool = True) -> Path:
    from hdit.data import build_dataset
    from hdit.data.subset import select_subset, selection_digest

    if (n is not None and n < 1) or shard_size < 1:
        raise ValueError(f"--n {n} / --shard-size {shard_size}; expected positive integers")
    ds = build_dataset(DataConfig(dataset_name, resolution), data_path, split=split)
    indices, selection = select_subset(ds.labels(), len(ds), n, seed)
    selection["indices_sha256"] = selection_digest(indices)
    out = Path(out)
    meta = {"kind": "dataset", "dataset": dataset_name, "resolution": resolution, "split": split, "n": n,
            "seed": seed, "data": str(data_path) if data_path else None, "shard_size": shard_size,
            "selection": selection, "num_classes": ds.num_classes}
    with RunLock(out, "hdit data export"):
        io.remove_stale_temporaries(out)
        _check_previous(out, meta)
        write_record(out / PARTIAL, meta)
        starts = range(0, len(indices), shard_size)
        for k, start in enumerate(tqdm(starts, desc=f"export {dataset_name}", disable=not progress)):
            path = out / f"shard-{k:05d}.npz"
            if path.exists():
                continue
            images, labels = ds.get_uint8(indices[start:start + shard_size])
            io.save_npz(path, images=images, labels=labels.astype(np.int64))
        write_set_record(out, {**meta, "provenance": provenance()}, len(starts))  # last: marks a complete export
    return out


def main(args) -> int:
    from hdit.data import DataError

    try:
        if args.action == "synth":
            from hdit.data import synth

            return synth.main(args)
        if args.action == "prepare":
            from hdit.data.prepare import prepare

            m = prepare(args.dataset, args.data, args.resolution, args.out, args.split, args.workers,
                        args.chunk_images, args.replace, progress=not args.quiet)
            print(f"{args.out}: {m['images']} images of {m['dataset']} at {m['resolution']} px in "
                  f"{len(m['chunks'])} chunks ({m['bytes'] / 2 ** 30:.2f} GiB)")
            return 0
        export(args.dataset, args.resolution, args.n, args.out, args.split, args.data, args.seed, args.shard_size)
    except (DataError, ValueError) as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    return 0
