"""A dataset split prepared once by `hdit data prepare` (`hdit.data.prepare`), read back for training and FID.

The folder holds the ADM centre crop (`hdit.data.folders.load_image`, bit for bit) of every image of the split
at one resolution, in dataset order (image i here is image i of the folder dataset):

    chunk-00000.npy ...   uint8 [n, R, R, 3] .npy arrays, read through a memory map (no decoding)
    labels.npy            int64 [N] class per image (0 for an unconditional folder such as FFHQ)
    files.tsv             the source listing: relative path, byte size, mtime (ns), label; one line per image
    manifest.json         written last: settings, class names, the source's identity, every chunk's sha256

Why uint8 .npy chunks (measured in results/bench/loader-cpu.json and issue 24): a random batch gathered from
a memory map costs ~1e5 img/s per core at 128 px, where decoding JPEGs (the raw folder) or even the PNGs of an
edm2-style zip costs 1e2-1e3; the price is the size on disk (R * R * 3 bytes per image, README).

Opening checks everything against the manifest: each chunk's size and sha256 (threads; hashlib releases the
GIL), the labels' sha256, and, when the source folder is still reachable, that it has not changed since
(listing + sizes + mtimes). A damaged chunk or a changed source is an error naming it (exit 2): nothing
computed from it could be trusted.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hdit.data.base import UInt8Dataset
from hdit.data.folders import DataError
from hdit.integrity import DamagedFileError, read_record
from hdit.io import file_sha256

PREPARED_VERSION = 1  # bump when the layout or the meaning of a prepared folder changes
MANIFEST, PLAN, FILES, LABELS = "manifest.json", "plan.json", "files.tsv", "labels.npy"


def chunk_name(k: int) -> str:
    return f"chunk-{k:05d}.npy"


class SourceChangedError(DataError):
    """The source folder differs from the one a prepared split was made from."""


def source_listing(dataset) -> str:
    """files.tsv of a folder dataset: `relpath \\t size \\t mtime_ns \\t label` per image, in dataset order."""
    lines = []
    for path, label in dataset.files:
        st, rel = path.stat(), path.relative_to(dataset.root).as_posix()
        if "\t" in rel or "\n" in rel:
            raise DataError(f"{path}: a tab or newline in the file name; expected plain names (rename it)")
        lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{label}\n")
    return "".join(lines)


def listing_sha256(listing: str) -> str:
    return hashlib.sha256(listing.encode()).hexdigest()


def _parse(listing: str) -> dict[str, tuple[str, ...]]:
    return {f[0]: tuple(f[1:]) for f in (line.split("\t") for line in listing.splitlines() if line)}


def _names(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def describe_change(old: str, new: str) -> str:
    """What differs between two listings (files.tsv texts), e.g. '2 added (a.JPEG, b.JPEG), 1 modified (c.JPEG)'."""
    a, b = _parse(old), _parse(new)
    added, removed = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
    size = sorted(k for k in a.keys() & b.keys() if a[k][0] != b[k][0])
    mtime = sorted(k for k in a.keys() & b.keys() if a[k][0] == b[k][0] and a[k][1] != b[k][1])
    relabel = sorted(k for k in a.keys() & b.keys() if a[k][2:] != b[k][2:])
    parts = [f"{len(v)} {what} ({_names(v)})" for v, what in
             ((added, "added"), (removed, "removed"), (size, "changed in size"),
              (mtime, "rewritten (same size, new mtime)"), (relabel, "relabelled")) if v]
    return "; ".join(parts) or "the files are the same but listed in another order"


def read_manifest(root) -> dict:
    """The manifest of a finished prepared folder, checked (its record checksum and version)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        what = "an unfinished `hdit data prepare` (no manifest.json yet)" if (root / PLAN).is_file() else \
            "not a prepared dataset folder (no manifest.json)"
        raise DataError(f"{root} is {what}; run `hdit data prepare` with the same arguments to finish it")
    m = read_record(path, "prepare the split again (`hdit data prepare ... --replace`)")
    if m.get("version") != PREPARED_VERSION or m.get("kind") != "prepared dataset":
        raise DataError(f"{path}: prepared-dataset version {m.get('version')!r}; this code reads version "
                        f"{PREPARED_VERSION}: prepare the split again (`hdit data prepare ... --replace`)")
    return m


def is_prepared(path) -> bool:
    """A folder written by `hdit data prepare` (finished or not), as opposed to a folder of images."""
    return path is not None and ((Path(path) / MANIFEST).is_file() or (Path(path) / PLAN).is_file())


def chunk_problem(root: Path, entry: dict) -> str | None:
    """Why chunk `entry` of a manifest cannot be used (None: it verifies)."""
    path = root / entry["file"]
    if not path.is_file():
        return "is missing"
    if path.stat().st_size != entry["bytes"]:
        return f"has {path.stat().st_size} bytes; expected {entry['bytes']} (truncated or replaced)"
    if file_sha256(path) != entry["sha256"]:
        return "differs from the sha256 recorded in manifest.json when it was written (damaged or replaced)"
    return None


def verify_chunks(root: Path, manifest: dict, threads: int | None = None) -> list[tuple[str, str]]:
    """[(chunk file, problem)] of every chunk that does not verify (empty: all good)."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        problems = pool.map(lambda e: chunk_problem(root, e), manifest["chunks"])
        return [(e["file"], p) for e, p in zip(manifest["chunks"], problems) if p]


class PreparedDataset(UInt8Dataset):
    """A prepared split: the folder dataset's interface (`__len__`, `num_classes`, `resolution`, `get_uint8`,
    `get_batch`, `labels`, `identity`), read from memory-mapped uint8 chunks."""

    def __init__(self, root, verify: bool = True, check_source: bool = True):
        self.root = Path(root)
        self.manifest = m = read_manifest(self.root)
        self.name, self.split, self.resolution = m["dataset"], m["split"], m["resolution"]
        self.classes, self.num_classes = list(m["classes"]), len(m["classes"])
        self.starts = np.concatenate([[0], np.cumsum([c["images"] for c in m["chunks"]])]).astype(np.int64)
        if verify:
            self._verify()
        self._labels = self._read_labels()
        if check_source:
            self.check_source()
        self._maps: dict[int, np.ndarray] = {}

    def _verify(self) -> None:
        bad = verify_chunks(self.root, self.manifest)
        if bad:
            listed = "; ".join(f"{self.root / f} {p}" for f, p in bad[:3]) + (f" (and {len(bad) - 3} more)"
                                                                                if len(bad) > 3 else "")
            raise DamagedFileError(f"{listed}; rerun `hdit data prepare` with the same arguments: it redoes the "
                                   "chunks that do not verify")

    def _read_labels(self) -> np.ndarray:
        path, entry = self.root / LABELS, self.manifest["labels"]
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            raise DamagedFileError(f"{path}: missing or differs from the sha256 in manifest.json; rerun "
                                   "`hdit data prepare` with the same arguments")
        labels = np.load(path, allow_pickle=False)
        if labels.shape != (len(self),):
            raise DamagedFileError(f"{path}: {labels.shape[0]} labels for {len(self)} images")
        return labels

    def check_source(self) -> None:
        """Refuse a source folder that changed since it was prepared (skipped when it is not reachable here,
        e.g. the prepared copy on a training node: the prepared folder then stands alone)."""
        from hdit.data.folders import ImageFolderDataset

        src = self.manifest["source"]
        if not Path(src["path"]).is_dir():
            return
        now = source_listing(ImageFolderDataset(src["path"], self.resolution, bool(self.classes)))
        if listing_sha256(now) != src["files_sha256"]:
            before = (self.root / FILES).read_text() if (self.root / FILES).is_file() else ""
            change = describe_change(before, now)
            raise SourceChangedError(
                f"{self.root} was prepared from {src['path']}, which has changed since ({change}); prepare it "
                "again (`hdit data prepare ... --replace`; Snakemake: delete "
                f"{self.root / MANIFEST} and rerun) or restore the folder")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):  # DataLoader workers open their own memory maps
        return {**self.__dict__, "_maps": {}}

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            entry = self.manifest["chunks"][k]
            arr = np.load(self.root / entry["file"], mmap_mode="r", allow_pickle=False)
            if arr.dtype != np.uint8 or arr.shape != (entry["images"], self.resolution, self.resolution, 3):
                raise DamagedFileError(f"{self.root / entry['file']}: array {arr.dtype} {arr.shape}; expected "
                                       f"uint8 ({entry['images']}, {self.resolution}, {self.resolution}, 3)")
            self._maps[k] = arr
        return self._maps[k]

    def get_uint8(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N, R, R, 3] and int64 labels [N], gathered from the chunks (no decoding)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range [0, {len(self)}) of the prepared split {self.root}")
        chunk = np.searchsorted(self.starts, indices, side="right") - 1
        out = np.empty((len(indices), self.resolution, self.resolution, 3), np.uint8)
        for k in np.unique(chunk):
            m = chunk == k
            out[m] = self._map(int(k))[indices[m] - self.starts[k]]
        return out, self._labels[indices]

    def labels(self) -> np.ndarray | None:
        return self._labels.copy() if self.classes else None

    def identity(self) -> dict:
        """The source folder's identity as `ImageFolderDataset.identity` gives it: the pixels are the same, so
        FID statistics from the prepared split share the raw folder's cache key."""
        return dict(self.manifest["identity"])
