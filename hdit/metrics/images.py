"""Image sets read by the metrics: a sample directory of `shard-NNNNN.npz` files (uint8 NHWC `images`,
int64 `labels`, see docs/ARCHITECTURE.md) or a directory of image files, and their content hash.

Only the names the writers make are read: `shard-<digits>.npz` (`hdit sample`, `hdit data export`); any other
visible .npz is an error, hidden files (the writers' temporaries) are skipped. Image files follow the rules
shared with the training data (`hdit.imagefile`). A shard directory is a complete set or nothing: its meta.json
must record exactly the shards found, with their checksums (`hdit.integrity.check_set`); every shard's checksum
is verified when it is read.
"""
from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from hdit.errors import HarnessError
from hdit.imagefile import IMAGE_EXTENSIONS, ImageFileError, is_hidden, list_images, read_rgb
from hdit.integrity import NPZ_ERRORS, check_set, damaged, load_npz
from hdit.io import write_text

SHARD_NAME = re.compile(r"shard-\d{5,}\.npz")


class MetricsError(HarnessError):
    """Bad input to a metric: the message names the value and what was expected."""


def shard_fix(path: Path) -> str:
    return (f"delete it and {path.parent / 'meta.json'}, then rerun the job that wrote it (`hdit sample` redraws "
            "the same shard from its seed and index; `hdit data export` re-exports it)")


def list_shards(root: Path) -> list[Path]:
    """`shard-NNNNN.npz` files below `root` (sorted); another visible .npz is refused, hidden ones skipped."""
    found = sorted(p for p in root.rglob("*.npz") if not is_hidden(p, root) and p.is_file())
    foreign = [p for p in found if not SHARD_NAME.fullmatch(p.name)]
    if foreign:
        raise MetricsError(f"{foreign[0]}: not a shard name written by `hdit sample` / `hdit data export` "
                           "(shard-NNNNN.npz); move it out of the sample directory")
    return found


def read_shard_images(path: Path) -> np.ndarray:
    """The checked `images` array of a shard."""
    return load_npz(path, ("images",), shard_fix(path))["images"]


def _npz_images_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of `images` in an .npz shard without reading the array."""
    try:
        with zipfile.ZipFile(path) as z, z.open("images.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except NPZ_ERRORS as e:
        raise damaged(path, f"not an .npz shard with an `images` array ({type(e).__name__}: {e})",
                      shard_fix(path)) from None
    return shape, dtype


def _files(root: Path) -> tuple[list[Path], list[Path]]:
    return list_shards(root), list_images(root)


class ImageSet(torch.utils.data.Dataset):
    """Images of a directory in a fixed order (sorted shards / sorted relative paths).

    Item i -> float32 CHW tensor in [0, 255], after `resize` (a HWC numpy -> HWC numpy function,
    e.g. clean-fid's `clean` resizer); all images must share one size (checked).
    """

    def __init__(self, root: str | Path, resize=None):
        self.root, self.resize = Path(root), resize
        if not self.root.is_dir():
            raise MetricsError(f"{root}: not a directory; expected a directory of .npz shards or image files")
        self.shards, self.images = _files(self.root)
        if self.shards and self.images:
            raise MetricsError(f"{root}: holds both .npz shards and image files; expected one kind")
        self._cache: tuple[int, np.ndarray] | None = None
        self.record = None
        if self.shards:
            self.record = check_set(self.root, self.shards)  # exactly the shards its meta.json records
            self.counts = [self._shard_len(p) for p in self.shards]
            self.offsets = np.cumsum([0] + self.counts)
        if len(self) == 0:
            raise MetricsError(f"{root}: no images (expected shard-NNNNN.npz files or "
                               f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images)")
        self.shape = self.image(0).shape  # (H, W, 3) of every image

    @staticmethod
    def _shard_len(path: Path) -> int:
        shape, dtype = _npz_images_header(path)
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
            raise MetricsError(f"{path}: images {shape} {dtype}; expected uint8 [N, H, W, 3]")
        return shape[0]

    @property
    def files(self) -> list[Path]:
        return self.shards or self.images

    def __len__(self) -> int:
        return int(self.offsets[-1]) if self.shards else len(self.images)

    def image(self, i: int) -> np.ndarray:
        """uint8 HWC image i."""
        if self.shards:
            s = int(np.searchsorted(self.offsets, i, side="right") - 1)
            if self._cache is None or self._cache[0] != s:  # consecutive indices hit one shard
                images = read_shard_images(self.shards[s])
                if images.shape[0] != self.counts[s]:
                    raise damaged(self.shards[s], f"holds {images.shape[0]} images, its header said {self.counts[s]}",
                                  shard_fix(self.shards[s]))
                self._cache = (s, images)
            img = self._cache[1][i - self.offsets[s]]
        else:
            try:
                img = read_rgb(self.images[i])
            except ImageFileError as e:
                raise MetricsError(str(e)) from None
        if hasattr(self, "shape") and img.shape != self.shape:
            where = self.images[i] if self.images else f"image {i}"
            raise MetricsError(f"{where}: size {img.shape}, expected {self.shape} like the first image of {self.root}")
        return img

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.image(i)
        if self.resize is not None:
            img = self.resize(img)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def content_hash(images: ImageSet, memo_dir: str | Path | None = None) -> str:
    """sha256 over (relative path, bytes) of every data file; memoised by (path, size, mtime) in `memo_dir`."""
    stats = [(str(p.relative_to(images.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in images.files]
    signature = hashlib.sha256(repr((str(images.root.resolve()), stats)).encode()).hexdigest()
    memo = Path(memo_dir) / "content-hash" / f"{signature}.txt" if memo_dir else None
    if memo is not None and memo.is_file():
        recorded = memo.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", recorded):  # else a damaged memo: hash again
            return recorded
    h = hashlib.sha256()
    for p, (rel, size, _) in zip(images.files, stats):
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        write_text(memo, digest + "\n")
    return digest
