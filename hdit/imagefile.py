"""One set of rules for image files, shared by training data (`hdit.data.folders`) and FID inputs
(`hdit.metrics.images`).

- Which files: names with an image extension, below the folder, skipping hidden files and folders (names
  starting with "."): editor backups, `.ipynb_checkpoints`, macOS `._*` companions and the harness's own
  temporaries (`hdit.io`) are never images of the set.
- Mode and bit depth: 8 bits per channel, colour (RGB, YCbCr, CMYK) or greyscale (L, P), no transparency.
  16-bit, float, 1-bit and alpha images are refused, never silently converted.
- Size: at least `MIN_SIDE` pixels a side (callers add their own: a fixed size for FID sets).
- Decoding: the whole file is decoded; a truncated or corrupt file is an error naming it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hdit.errors import HarnessError

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
RGB_MODES = ("RGB", "L", "P", "CMYK", "YCbCr")  # 8-bit modes with an exact (or standard) RGB conversion
MIN_SIDE = 2


class ImageFileError(HarnessError):
    """An image file that breaks the rules above; the message names it."""


def is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_images(root: str | os.PathLike) -> list[Path]:
    """The image files below `root` (sorted; hidden ones skipped)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(p, root) and p.is_file())


def stored_bits(im, path) -> int | None:
    """Bits per channel as stored in the file, where Pillow hides them: it opens a 16-bit-per-channel RGB PNG
    (or TIFF) as 8-bit "RGB", dropping the low byte. None where the mode says it (every other format)."""
    if im.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)  # signature (8), IHDR length and type (8), width, height (8), bit depth (1)
        return header[24] if len(header) == 25 and header[12:16] == b"IHDR" else None
    if im.format == "TIFF":
        bits = im.tag_v2.get(258)  # BitsPerSample
        return max(bits) if isinstance(bits, tuple) and bits else bits
    return None


def check_mode(im, path) -> None:
    bits = stored_bits(im, path)
    if bits is not None and bits > 8:
        raise ImageFileError(f"{path}: {bits} bits per channel ({im.mode} {im.format}); expected 8-bit RGB or "
                             "greyscale: convert it to 8 bits deliberately (e.g. `convert in.png -depth 8 out.png`)")
    if im.mode not in RGB_MODES:
        bands = len(im.getbands())
        raise ImageFileError(f"{path}: image mode {im.mode!r} ({bands} channel{'s' * (bands != 1)}); expected "
                             f"8-bit RGB or greyscale ({', '.join(RGB_MODES)}): convert it, dropping alpha / high bit "
                             "depth deliberately")
    if "transparency" in im.info:
        raise ImageFileError(f"{path}: image mode {im.mode!r} with a transparent colour; expected an opaque image")
    if min(im.size) < MIN_SIDE:
        raise ImageFileError(f"{path}: {im.size[0]}x{im.size[1]} pixels; expected at least {MIN_SIDE} a side")


def open_rgb(path: str | os.PathLike):
    """Decode an image file under the rules -> a loaded PIL RGB image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            check_mode(im, path)
            im.load()  # decodes everything: a truncated file fails here
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, ImageFileError):
            raise
        raise ImageFileError(f"{path}: unreadable or corrupt image ({e}); replace or remove the file") from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 HWC RGB array of an image file under the rules."""
    return np.asarray(open_rgb(path))
