"""`shapes`: the embedded, offline, procedural dataset of the `default` profile.

Ten classes = five shapes (disk, square, triangle, plus, ring) x two colours (class = 5 * colour +
shape; colour 0 is a warm orange, colour 1 a cool blue). Every scene is a pure function of
(seed, split, index):

- blake2b(f"hdit-shapes/{seed}/{split}/{index}") gives 64 bytes = 16 uint32 words -> 16 floats in
  [0, 1). They set the class, the centre (in [-0.45, 0.45]^2 of the normalised [-1, 1]^2 frame),
  the size (circumradius 0.3..0.6), the rotation (0..2 pi), the background grey (0.15..0.85) and a
  +-0.08 RGB jitter of the class colour. Hashing (not an RNG stream) keeps scenes identical across
  numpy/torch versions and lets any index be drawn on its own.
- Shapes are signed distance functions in normalised coordinates (disk, box, equilateral triangle,
  plus/cross and annulus: the exact 2-D SDFs, Quilez's forms), evaluated at pixel centres. Coverage
  = clip(0.5 - d / pixel, 0, 1) with pixel = 2 / resolution: a ~1 px linear anti-aliasing ramp. The
  same index therefore gives the same scene at 32, 64 or 128 px.
- Images are quantised to uint8 like real photographs; the training tensors are uint8 / 127.5 - 1.

Vectorised numpy: the whole batch is rendered at once (about 3,000 32 px images/s on one CPU core).
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

from hdit.data.base import UInt8Dataset

SHAPES = ("disk", "square", "triangle", "plus", "ring")
COLOURS = ((0.95, 0.55, 0.10), (0.15, 0.45, 0.95))
NUM_CLASSES = len(SHAPES) * len(COLOURS)
SPLITS = ("train", "test")
SPLIT_SIZES = {"train": 1_000_000, "test": 50_000}
RENDERER_VERSION = 1  # bump when `render` changes what an index draws (reference statistics are keyed by it)


def class_name(label: int) -> str:
    return f"{('orange', 'blue')[label // len(SHAPES)]} {SHAPES[label % len(SHAPES)]}"


def _words(indices, seed: int, split: str, count: int = 16) -> np.ndarray:
    """The first `count` uint32 words of blake2b-512(f"hdit-shapes/{seed}/{split}/{index}") per index."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    prefix, nbytes = f"hdit-shapes/{seed}/{split}/", 4 * count
    raw = b"".join(hashlib.blake2b(f"{prefix}{i}".encode(), digest_size=64).digest()[:nbytes] for i in indices.tolist())
    return np.frombuffer(raw, dtype="<u4").reshape(len(indices), count).astype(np.uint32)


def _label(u0: np.ndarray) -> np.ndarray:
    return np.minimum((u0 * NUM_CLASSES).astype(np.int64), NUM_CLASSES - 1)


def scene_labels(indices, seed: int = 0, split: str = "train") -> np.ndarray:
    """Just the class of each scene (the first hash word), without rendering."""
    return _label(_words(indices, seed, split, count=1)[:, 0].astype(np.float64) / 2.0 ** 32)


def scene_params(indices, seed: int = 0, split: str = "train") -> dict[str, np.ndarray]:
    """The per-sample scene parameters, drawn from blake2b(seed, split, index)."""
    u = _words(indices, seed, split).astype(np.float64) / 2.0 ** 32
    label = _label(u[:, 0])
    colour = np.asarray(COLOURS)[label // len(SHAPES)] + (u[:, 7:10] - 0.5) * 0.16
    return {
        "label": label,
        "centre": (u[:, 1:3] - 0.5) * 0.9,
        "size": 0.3 + 0.3 * u[:, 3],
        "angle": 2 * np.pi * u[:, 4],
        "background": 0.15 + 0.7 * u[:, 5],
        "colour": np.clip(colour, 0, 1),
    }


# ----------------------------------------------------------------------------- exact 2-D SDFs
# Each takes local coordinates px, py of shape [N, H, W] and a size r of shape [N, 1, 1].

def _sd_disk(px, py, r):
    return np.hypot(px, py) - r


def _sd_box(px, py, bx, by):
    qx, qy = np.abs(px) - bx, np.abs(py) - by
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sd_square(px, py, r):
    half = r / np.sqrt(2)  # circumradius r
    return _sd_box(px, py, half, half)


def _sd_triangle(px, py, r):
    """Equilateral triangle with circumradius r, one vertex up (Quilez's sdEquilateralTriangle)."""
    side = r * np.sqrt(3)
    k = np.sqrt(3)
    x = np.abs(px) - side / 2
    y = py + side / (2 * k)  # centroid at the origin
    flip = x + k * y > 0
    x, y = np.where(flip, (x - k * y) / 2, x), np.where(flip, (-k * x - y) / 2, y)
    x = x - np.clip(x, -side, 0)
    return -np.hypot(x, y) * np.sign(y)


def _sd_plus(px, py, r):
    """Plus/cross with arm half-length r and half-width r/3 (Quilez's sdCross, exact)."""
    bx, by = r, r / 3
    x, y = np.abs(px), np.abs(py)
    x, y = np.maximum(x, y), np.minimum(x, y)
    qx, qy = x - bx, y - by
    k = np.maximum(qx, qy)
    wx = np.where(k > 0, qx, by - x)
    wy = np.where(k > 0, qy, -k)
    return np.sign(k) * np.hypot(np.maximum(wx, 0), np.maximum(wy, 0))


def _sd_ring(px, py, r):
    """Annulus of outer radius r and thickness r/3."""
    return np.abs(np.hypot(px, py) - r * 5 / 6) - r / 6


_SDFS = (_sd_disk, _sd_square, _sd_triangle, _sd_plus, _sd_ring)


def render(indices, resolution: int = 32, seed: int = 0, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Render scenes -> (uint8 images [N, H, W, 3], int64 labels [N])."""
    if not isinstance(resolution, (int, np.integer)) or resolution < 4:
        raise ValueError(f"resolution={resolution!r}; expected an integer >= 4")
    p = scene_params(indices, seed, split)
    n = len(p["label"])
    coords = (np.arange(resolution) + 0.5) / resolution * 2 - 1  # pixel centres in [-1, 1]
    gy, gx = np.meshgrid(-coords, coords, indexing="ij")  # y up
    dx = gx[None] - p["centre"][:, 0, None, None]
    dy = gy[None] - p["centre"][:, 1, None, None]
    cos, sin = np.cos(p["angle"])[:, None, None], np.sin(p["angle"])[:, None, None]
    px, py = cos * dx + sin * dy, -sin * dx + cos * dy  # rotate into the shape's frame
    r = p["size"][:, None, None]
    shape = p["label"] % len(SHAPES)
    d = np.empty((n, resolution, resolution))
    for k, sdf in enumerate(_SDFS):
        m = shape == k
        if m.any():
            d[m] = sdf(px[m], py[m], r[m])
    coverage = np.clip(0.5 - d / (2 / resolution), 0, 1)[..., None]
    bg = p["background"][:, None, None, None]
    img = bg * (1 - coverage) + p["colour"][:, None, None, :] * coverage
    return np.round(img * 255).astype(np.uint8), p["label"]


@functools.lru_cache(maxsize=4)
def _split_labels(seed: int, split: str, size: int) -> np.ndarray:
    labels = scene_labels(np.arange(size), seed, split)
    labels.flags.writeable = False  # shared by every caller
    return labels


class ShapesDataset(UInt8Dataset):
    """Map-style dataset: item i -> (float32 CHW tensor in [-1, 1], label). `get_batch` renders at once."""

    def __init__(self, resolution: int = 32, split: str = "train", seed: int = 0, size: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}")
        self.resolution, self.split, self.seed = resolution, split, seed
        self.size = size or SPLIT_SIZES[split]
        self.num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return self.size

    def get_uint8(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.size):
            raise IndexError(f"shapes index out of range [0, {self.size})")
        return render(indices, self.resolution, self.seed, self.split)

    def labels(self) -> np.ndarray:
        """The class of every image of the split (hashing only, once per process)."""
        return _split_labels(self.seed, self.split, self.size)

    def identity(self) -> dict:
        """What the images are a pure function of (a procedural dataset has no files to hash)."""
        return {"dataset": "shapes", "seed": self.seed, "split": self.split, "size": self.size,
                "resolution": self.resolution, "renderer": RENDERER_VERSION}
