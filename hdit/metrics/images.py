"""Image sets read by the metrics: a sample directory of `shard-*.npz` files (uint8 NHWC `images`,
int64 `labels`, see docs/ARCHITECTURE.md) or a directory of image files, and their content hash."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from hdit.io import write_text

IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}  # clean-fid's, less .npy


class MetricsError(ValueError):
    """Bad input to a metric: the message names the value and what was expected."""


def _npz_images_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of `images` in an .npz shard without reading the array."""
    try:
        with zipfile.ZipFile(path) as z, z.open("images.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise MetricsError(f"{path}: not an .npz shard with an `images` array ({e})") from e
    return shape, dtype


def _files(root: Path) -> tuple[list[Path], list[Path]]:
    shards = sorted(p for p in root.rglob("*.npz") if p.is_file())
    images = sorted(p for p in root.rglob("*") if p.suffix.lower()[1:] in IMAGE_EXTENSIONS and p.is_file())
    return shards, images


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
        if self.shards:
            self.counts = [self._shard_len(p) for p in self.shards]
            self.offsets = np.cumsum([0] + self.counts)
        if len(self) == 0:
            raise MetricsError(f"{root}: no images (expected shard-*.npz files or "
                               f"{'/'.join(sorted(IMAGE_EXTENSIONS))} images)")
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
                with np.load(self.shards[s]) as z:
                    self._cache = (s, z["images"])
            img = self._cache[1][i - self.offsets[s]]
        else:
            from PIL import Image

            with Image.open(self.images[i]) as im:
                img = np.asarray(im.convert("RGB"))
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
        return memo.read_text().strip()
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
