"""`hdit data prepare`: the training split at the model's resolution, preprocessed once (issue 24).

    hdit data prepare --dataset imagenet --data /data/imagenet/train --resolution 128 --out DIR [--workers N]

Every image of the split goes through `hdit.data.folders.load_image` (decode, the `hdit.imagefile` rules, ADM's
centre crop) exactly as the raw folder dataset would, once, in `--workers` processes (default: the cores this
job may use); the result is the folder `hdit.data.prepared.PreparedDataset` reads (layout there). Training
(`hdit train --data DIR`) and `hdit refstats --data DIR` then read uint8 pixels instead of decoding ImageNet
again for every epoch, row and reference set.

- Resumable: chunks are written atomically, each with its sha256 beside it (`chunk-k.npy.sha256`); a killed
  prepare run again with the same arguments keeps the chunks that verify and computes the rest. The manifest
  is written last: its presence means the folder is complete.
- Never mixed: plan.json (written first) records the settings, the preprocessing (its code's sha256, Pillow's
  version) and the source's identity (sha256 of files.tsv: paths, sizes, mtimes, labels). A rerun whose
  settings or source differ is refused, naming what changed; `--replace` deletes the old folder's files and
  prepares again. A finished folder whose source is unchanged is verified (chunks that do not are redone).
- One process writes a folder at a time (`hdit.runlock`).
"""
from __future__ import annotations

import hashlib
import inspect
import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hdit import io
from hdit.data import folders
from hdit.data.folders import DataError, load_image
from hdit.data.prepared import (FILES, LABELS, MANIFEST, PLAN, PREPARED_VERSION, chunk_name, describe_change,
                                listing_sha256, source_listing, verify_chunks)
from hdit.integrity import read_record, write_record
from hdit.provenance import provenance
from hdit.runlock import RunLock

PREPARABLE = ("imagenet", "ffhq")
SETTINGS = ("version", "dataset", "split", "resolution", "chunk_images", "preprocessing")
CHUNK_BYTES = 256 << 20  # ~256 MiB per chunk: a unit of work of ~20 core-seconds at 128 px, ~250 chunks for ImageNet


class PrepareError(DataError):
    """An output folder that holds something else than this preparation."""


def default_chunk_images(resolution: int) -> int:
    return max(1, CHUNK_BYTES // (resolution * resolution * 3))


def default_workers() -> int:
    """The cores this process may run on (SLURM and Snakemake's --cores set the affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def preprocessing() -> dict:
    """What the pixels are a function of besides the source files: the crop code itself and Pillow's resampling."""
    import PIL

    from hdit import imagefile

    code = "".join(inspect.getsource(f) for f in (folders.center_crop_arr, folders.load_image, imagefile.open_rgb,
                                                   imagefile.check_mode))
    return {"crop": "ADM centre crop: hdit.data.folders.load_image (BOX halvings, BICUBIC, centre crop)",
            "code_sha256": hashlib.sha256(code.encode()).hexdigest(), "pillow": PIL.__version__}


def open_source(dataset: str, data, resolution: int, split: str = "train"):
    if dataset not in PREPARABLE:
        raise PrepareError(f"--dataset {dataset!r}; expected one of {PREPARABLE} (the embedded 'shapes' data is "
                           "generated on the fly and needs no preparation)")
    if data is None:
        raise PrepareError(f"--data is required: the {dataset} folder to prepare")
    return folders.imagenet(data, resolution, split) if dataset == "imagenet" else folders.ffhq(data, resolution)


def make_plan(ds, dataset: str, split: str, resolution: int, chunk_images: int, listing: str) -> dict:
    n = len(ds)
    chunks = [{"file": chunk_name(k), "images": min(chunk_images, n - k * chunk_images)}
              for k in range(math.ceil(n / chunk_images))]
    return {"kind": "prepared dataset plan", "version": PREPARED_VERSION, "dataset": dataset, "split": split,
            "resolution": resolution, "images": n, "classes": ds.classes, "chunk_images": chunk_images,
            "chunks": chunks, "storage": "uint8 NHWC .npy chunks, memory-mapped",
            "source": {"path": str(ds.root.resolve()), "files_sha256": listing_sha256(listing)},
            "identity": ds.identity(), "preprocessing": preprocessing()}


def _changes(old: dict, new: dict, out: Path, listing: str) -> list[str]:
    """What differs between the preparation in `out` and the one asked for (empty: the same)."""
    diffs = []
    for k in SETTINGS:
        a, b = old.get(k), new[k]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{k}.{s}: {a.get(s)!r} -> {b.get(s)!r}" for s in sorted(a.keys() | b.keys())
                      if a.get(s) != b.get(s)]
        elif a != b:
            diffs.append(f"{k}: {a!r} -> {b!r}")
    src_a, src_b = old.get("source", {}), new["source"]
    if src_a.get("path") != src_b["path"]:
        diffs.append(f"source folder: {src_a.get('path')!r} -> {src_b['path']!r}")
    elif src_a.get("files_sha256") != src_b["files_sha256"]:
        before = (out / FILES).read_text() if (out / FILES).is_file() else ""
        diffs.append(f"source folder {src_b['path']} changed since: {describe_change(before, listing)}")
    return diffs


def _previous(out: Path) -> dict | None:
    """The manifest (finished) or plan (unfinished) in `out`; refuses a folder holding anything else."""
    for name in (MANIFEST, PLAN):
        if (out / name).is_file():
            return read_record(out / name, f"delete {out} and prepare again")
    others = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    if others:
        raise PrepareError(f"--out {out} holds files that are not a prepared dataset ({', '.join(sorted(others)[:3])}"
                           "); expected an empty or new folder, or one `hdit data prepare` wrote")
    return None


def _clear(out: Path) -> None:
    """Delete the files of a preparation (and nothing else) from `out`."""
    for p in [*out.glob("chunk-*.npy"), *out.glob("chunk-*.npy.sha256"), *(out / n for n in (MANIFEST, PLAN, FILES,
                                                                                             LABELS))]:
        p.unlink(missing_ok=True)


def _prepare_chunk(task: tuple) -> tuple[int, dict]:
    """Worker: crop the images of chunk k and write it, then its sha256 (a chunk without one is redone)."""
    out, k, entry, paths, resolution = task
    images = np.stack([load_image(p, resolution) for p in paths])
    path = Path(out) / entry["file"]
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
        digest, size = io.file_sha256(tmp), tmp.stat().st_size
    io.write_text(io.checksum_path(path), f"{digest}  {path.name}\n")
    return k, {**entry, "sha256": digest, "bytes": size}


def _chunk_done(out: Path, entry: dict) -> dict | None:
    """The manifest entry of a chunk written and verified (None: it has to be computed)."""
    path = out / entry["file"]
    recorded = io.recorded_checksums(path) if path.is_file() else []
    if not recorded or io.file_sha256(path) != recorded[0]:
        return None
    return {**entry, "sha256": recorded[0], "bytes": path.stat().st_size}


def _existing(out: Path, plan: dict, threads: int) -> dict[int, dict]:
    """Chunk index -> manifest entry of the chunks a previous run finished (checked, in threads)."""
    with ThreadPoolExecutor(max(1, min(threads, 8))) as pool:
        entries = pool.map(lambda e: _chunk_done(out, e), plan["chunks"])
        return {k: e for k, e in enumerate(entries) if e is not None}


def _forget_lock(fd: int) -> None:
    """Pool initializer: a worker closes its copy of the folder lock, so that the lock dies with the parent (a
    killed prepare's orphaned workers, which finish at most their current chunk, never block the rerun)."""
    os.close(fd)


def _compute(ds, plan: dict, out: Path, done: dict[int, dict], workers: int, progress: bool,
             lock_fd: int) -> dict[int, dict]:
    """Compute the chunks not in `done` in `workers` processes; returns every chunk's manifest entry."""
    k0, n = plan["chunk_images"], len(plan["chunks"])
    tasks = [(str(out), k, e, [str(ds.files[i][0]) for i in range(k * k0, k * k0 + e["images"])],
              plan["resolution"]) for k, e in enumerate(plan["chunks"]) if k not in done]
    done = dict(done)
    # fork before any thread exists (tqdm's monitor): the workers need only this module, no re-import
    pool = multiprocessing.get_context("fork").Pool(min(workers, len(tasks)), _forget_lock, (lock_fd,)) \
        if workers > 1 and len(tasks) > 1 else None
    bar = tqdm(total=n, initial=len(done), unit="chunk", desc=f"prepare {plan['dataset']}-{plan['resolution']}",
               disable=not progress)
    try:
        for k, entry in (pool.imap_unordered(_prepare_chunk, tasks) if pool else map(_prepare_chunk, tasks)):
            done[k] = entry
            bar.update(1)
    finally:
        bar.close()
        if pool:
            pool.terminate()
    return done


def _up_to_date(out: Path, manifest: dict) -> bool:
    """A finished folder of the same settings and source: True if every chunk verifies; else the bad ones
    are deleted (named in a warning) so that they are computed again."""
    bad = verify_chunks(out, manifest)
    side = [(name, "differs from manifest.json") for name, digest in
            ((LABELS, manifest["labels"]["sha256"]), (FILES, manifest["source"]["files_sha256"]))
            if not (out / name).is_file() or io.file_sha256(out / name) != digest]
    if not bad and not side:
        return True
    warnings.warn(f"{out}: {len(bad + side)} file(s) do not verify and are prepared again: "
                  + "; ".join(f"{f} {p}" for f, p in (bad + side)[:3]), stacklevel=3)
    for f, _ in bad:
        (out / f).unlink(missing_ok=True)
        io.checksum_path(out / f).unlink(missing_ok=True)
    (out / MANIFEST).unlink()
    return False


def prepare(dataset: str, data, resolution: int, out, split: str = "train", workers: int | None = None,
            chunk_images: int | None = None, replace: bool = False, progress: bool = True) -> dict:
    """Prepare (or finish, or verify) the split in `out`; returns the manifest."""
    for name, v in (("resolution", resolution), ("workers", workers), ("chunk-images", chunk_images)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise PrepareError(f"--{name} {v!r}; expected a positive integer")
    start, workers = time.perf_counter(), workers or default_workers()
    ds = open_source(dataset, data, resolution, split)
    listing = source_listing(ds)
    plan = make_plan(ds, dataset, split, resolution, chunk_images or default_chunk_images(resolution), listing)
    out = Path(out)
    with RunLock(out, "hdit data prepare") as lock:
        io.remove_stale_temporaries(out)
        old = _previous(out)
        changes = _changes(old, plan, out, listing) if old is not None else []
        if changes and not replace:
            raise PrepareError(f"{out} holds a preparation with other settings or from another source ("
                               + "; ".join(changes) + "): pass --replace to prepare it again, or use another --out")
        if changes:
            _clear(out)
        elif old is not None and old["kind"] == "prepared dataset" and _up_to_date(out, old):
            return old
        write_record(out / PLAN, plan)
        io.write_text(out / FILES, listing)
        done = _compute(ds, plan, out, _existing(out, plan, workers), workers, progress, lock.fd)
        return _finish(ds, plan, out, [done[k] for k in range(len(plan["chunks"]))], workers,
                       time.perf_counter() - start)


def _finish(ds, plan: dict, out: Path, chunks: list[dict], workers: int, seconds: float) -> dict:
    with io.atomic_path(out / LABELS) as tmp, open(tmp, "wb") as f:
        np.save(f, np.array([label for _, label in ds.files], dtype=np.int64), allow_pickle=False)
    manifest = {**plan, "kind": "prepared dataset", "chunks": chunks,
                "labels": {"file": LABELS, "sha256": io.file_sha256(out / LABELS)},
                "bytes": sum(c["bytes"] for c in chunks), "workers": workers, "seconds": round(seconds, 2),
                "provenance": provenance()}
    return write_record(out / MANIFEST, manifest)
