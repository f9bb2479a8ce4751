"""Sample grids: one PNG of samples from a sample directory (`shard-*.npz`, docs/ARCHITECTURE.md).

Class-conditional samples (more than one label): one row per class, rows sorted by label, the first
`columns` samples of each class in sample order. Otherwise: the first samples, `columns` per row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hdit.integrity import load_npz
from hdit.io import atomic_path
from hdit.metrics.images import list_shards, shard_fix


def _shards(samples_dir: Path) -> list[Path]:
    if not samples_dir.is_dir():
        raise ValueError(f"{samples_dir}: not a directory; expected a sample directory of shard-*.npz files")
    shards = list_shards(samples_dir)
    if not shards:
        raise ValueError(f"{samples_dir}: no .npz shards; expected shard-*.npz with `images` and `labels`")
    return shards


def pick_samples(samples_dir, columns: int = 8, max_rows: int = 32, classes=None) -> list[list[np.ndarray]]:
    """Rows of uint8 HWC images (see module docstring); reads shards only until the grid is full."""
    if columns < 1 or max_rows < 1:
        raise ValueError(f"columns={columns}, max_rows={max_rows}; expected positive integers")
    by_label: dict[int, list[np.ndarray]] = {}
    flat: list[np.ndarray] = []
    wanted = None if classes is None else {int(c) for c in classes}
    for shard in _shards(Path(samples_dir)):
        z = load_npz(shard, ("images",), shard_fix(shard))
        images = z["images"]
        labels = z["labels"] if "labels" in z else np.zeros(len(images), np.int64)
        for img, label in zip(images, labels.tolist()):
            if len(flat) < columns * max_rows:
                flat.append(img)
            if wanted is None or label in wanted:
                row = by_label.setdefault(label, [])
                if len(row) < columns:
                    row.append(img)
        if wanted is not None and all(len(by_label.get(c, [])) == columns for c in wanted):
            break
    if wanted is not None:
        missing = sorted(wanted - set(by_label))
        if missing:
            raise ValueError(f"classes {missing} have no samples in {samples_dir}")
        return [by_label[c] for c in sorted(wanted)][:max_rows]
    if len(by_label) > 1:
        return [by_label[c] for c in sorted(by_label)][:max_rows]
    return [flat[i:i + columns] for i in range(0, len(flat), columns)]


def grid_image(rows: list[list[np.ndarray]], scale: int = 1, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile rows of equally sized HWC images into one uint8 image (nearest-neighbour upscaled by `scale`)."""
    h, w, c = rows[0][0].shape
    columns = max(len(r) for r in rows)
    cell_h, cell_w = h * scale + pad, w * scale + pad
    out = np.full((len(rows) * cell_h + pad, columns * cell_w + pad, c), background, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img.shape != (h, w, c):
                raise ValueError(f"image shape {img.shape} differs from {(h, w, c)}")
            big = img.repeat(scale, 0).repeat(scale, 1)
            out[pad + i * cell_h: pad + i * cell_h + h * scale, pad + j * cell_w: pad + j * cell_w + w * scale] = big
    return out


def save_grid(samples_dir, path, columns: int = 8, max_rows: int = 32, classes=None, scale: int | None = None,
              pad: int = 2) -> Path:
    """Write the grid PNG of `samples_dir` atomically to `path`; scale defaults to >= 64 px cells."""
    rows = pick_samples(samples_dir, columns, max_rows, classes)
    scale = scale or max(1, 64 // rows[0][0].shape[0])
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(grid_image(rows, scale, pad)).save(tmp, format="PNG")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hdit.grid", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--max-rows", type=int, default=32)
    p.add_argument("--classes", type=int, nargs="*", help="labels to show (default: all, sorted)")
    p.add_argument("--scale", type=int, help="nearest-neighbour upscale factor")
    args = p.parse_args(argv)
    try:
        save_grid(args.samples, args.out, args.columns, args.max_rows, args.classes, args.scale)
    except ValueError as e:
        print(f"hdit.grid: error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
