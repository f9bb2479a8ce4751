"""Sample grids (issue 13): for one table, one row of images per paper row, reference images first.

Every row shows the same columns: fixed class labels in ascending order, an equal number of images of each.
The labels are the first `classes` labels that every sample set of the table holds at least `per_class`
samples of (`hdit sample` draws labels uniformly from a seeded generator, so at the profile's counts that is
simply 0, 1, 2, ...); each cell is the first sample drawn with that label (in sample order), the reference row
the first images of that class in the training split. Where no label is that frequent in every set (a few
samples over many classes: the paper-smoke profile), every row shows fewer per label, the same count in each.
Unconditional sample sets (labels -1: FFHQ) show their first `classes x per_class` samples (at most as many as
the smallest set holds) and the first images of the split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hdit.integrity import check_set

UNCONDITIONAL = -1  # the label `hdit sample` stores for samples of an unconditional model


@dataclass
class SampleSet:
    """The shards of a sample directory and the label of every sample (images are read only when picked)."""
    root: Path
    shards: list[Path]
    labels: np.ndarray  # [N] int64
    shard_of: np.ndarray  # [N] shard index of each sample
    offset: np.ndarray  # [N] position inside its shard

    @classmethod
    def open(cls, root) -> "SampleSet":
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root}: not a directory; expected a sample directory of shard-*.npz files")
        shards = sorted(root.glob("shard-*.npz"))
        if not shards:
            raise ValueError(f"{root}: no shard-*.npz files; expected the output of `hdit sample`")
        check_set(root, shards)  # a complete set or nothing: a grid never shows a killed sampler's first shards
        labels, shard_of, offset = [], [], []
        for k, shard in enumerate(shards):
            with np.load(shard) as z:
                if "labels" not in z or "images" not in z:
                    raise ValueError(f"{shard}: expected arrays `images` (uint8 [N, H, W, 3]) and `labels`")
                lab = z["labels"].astype(np.int64)
            labels.append(lab)
            shard_of.append(np.full(len(lab), k))
            offset.append(np.arange(len(lab)))
        return cls(root, shards, *(np.concatenate(a) for a in (labels, shard_of, offset)))

    @property
    def conditional(self) -> bool:
        return bool((self.labels != UNCONDITIONAL).any())

    def images(self, indices) -> np.ndarray:
        """uint8 [len(indices), H, W, 3], in the order given, reading each needed shard once."""
        indices = np.asarray(indices, np.int64)
        out: list = [None] * len(indices)
        for k in np.unique(self.shard_of[indices]):
            with np.load(self.shards[k]) as z:
                images = z["images"]
            for j in np.flatnonzero(self.shard_of[indices] == k):
                out[j] = images[self.offset[indices[j]]]
        return np.stack(out)


def choose_classes(sets: list[SampleSet], per_class: int, classes: int) -> tuple[list[int], int]:
    """(column labels, images per label) of the grid: the first `classes` labels that every set holds
    `per_class` samples of -- or, where no label is that frequent (a few samples over many classes), as many as
    every set has of some common label. Unconditional sets: ([-1], how many images each row shows)."""
    if per_class < 1 or classes < 1:
        raise ValueError(f"per_class={per_class}, classes={classes}; expected positive integers")
    conditional = {s.conditional for s in sets}
    if conditional == {False}:
        return [UNCONDITIONAL], min(per_class * classes, *(len(s.labels) for s in sets))
    if len(conditional) > 1:
        raise ValueError("the sample sets mix class-conditional and unconditional samples; one grid shows one kind")
    common = sorted(set.intersection(*(set(s.labels.tolist()) for s in sets)) - {UNCONDITIONAL})
    for k in range(per_class, 0, -1):
        enough = [c for c in common if all((s.labels == c).sum() >= k for s in sets)]
        if enough:
            return enough[:classes], k
    raise ValueError(f"no class label is common to every sample set ({', '.join(str(s.root) for s in sets)}); "
                     "a grid compares the rows on the same labels")


def pick(labels: np.ndarray, columns: list[int], per_class: int) -> np.ndarray:
    """Indices of the first `per_class` entries of each column label, in column order (unconditional: the first
    `per_class`)."""
    if columns == [UNCONDITIONAL]:
        if len(labels) < per_class:
            raise ValueError(f"{len(labels)} images; the grid shows {per_class} per row")
        return np.arange(per_class)
    out = []
    for c in columns:
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            raise ValueError(f"class {c}: {len(idx)} image(s), expected {per_class}")
        out.append(idx)
    return np.concatenate(out)


def reference_images(dataset, columns: list[int], per_class: int, block: int = 4096):
    """(uint8 images, dataset indices) of the reference row: the first images of each column's class in the
    training split, found by reading labels in blocks (the procedural shapes labels are hashes, cheap per block)."""
    from hdit.data.shapes import ShapesDataset, scene_labels

    if columns == [UNCONDITIONAL]:
        idx = np.arange(per_class)
    elif isinstance(dataset, ShapesDataset):
        found: dict[int, list[int]] = {c: [] for c in columns}
        for start in range(0, len(dataset), block):
            chunk = np.arange(start, min(start + block, len(dataset)))
            for i, c in zip(chunk.tolist(), scene_labels(chunk, dataset.seed, dataset.split).tolist()):
                if c in found and len(found[c]) < per_class:
                    found[c].append(i)
            if all(len(v) == per_class for v in found.values()):
                break
        if any(len(v) < per_class for v in found.values()):
            raise ValueError(f"the training split has fewer than {per_class} images of a class in {columns}")
        idx = np.array([i for c in columns for i in found[c]], np.int64)
    else:
        labels = dataset.labels()
        idx = pick(np.full(len(dataset), UNCONDITIONAL) if labels is None else labels, columns, per_class)
    images, _ = dataset.get_uint8(idx)
    return images, idx


def tile(rows: list[np.ndarray], scale: int = 1, pad: int = 2, background: int = 255) -> np.ndarray:
    """Rows of equally many, equally sized HWC images -> one uint8 image (nearest-neighbour upscaled by `scale`)."""
    counts = {len(r) for r in rows}
    if len(counts) != 1:
        raise ValueError(f"rows of {sorted(counts)} images; every row of a grid has the same count")
    n, h, w, c = rows[0].shape
    cell_h, cell_w = h * scale + pad, w * scale + pad
    out = np.full((len(rows) * cell_h + pad, n * cell_w + pad, c), background, np.uint8)
    for i, row in enumerate(rows):
        if row.shape[1:] != (h, w, c):
            raise ValueError(f"images of shape {row.shape[1:]} beside {(h, w, c)}; a grid needs one image size")
        big = row.repeat(scale, 1).repeat(scale, 2)
        for j, img in enumerate(big):
            y, x = pad + i * cell_h, pad + j * cell_w
            out[y:y + h * scale, x:x + w * scale] = img
    return out


# ----------------------------------------------------------------------------- the figure

MAX_CELL = 128  # px: larger images are shown reduced (a 1024 px FFHQ sample is a thumbnail in a grid)


def _cells(images: np.ndarray) -> np.ndarray:
    """Images at the size they are shown: reduced to at most MAX_CELL px, small ones enlarged by tile()."""
    h = images.shape[1]
    if h <= MAX_CELL:
        return images
    from PIL import Image

    f = -(-h // MAX_CELL)
    return np.stack([np.asarray(Image.fromarray(im).reduce(f)) for im in images])


def grid_rows(samples: dict[str, Path], dataset, per_class: int = 2, classes: int = 10):
    """(rows of images, the CSV frame of what each cell shows, column labels): reference row first, then one
    row per key of `samples` (paper row -> sample directory), in the given order."""
    sets = {k: SampleSet.open(p) for k, p in samples.items()}
    if not sets:
        raise ValueError("no sample directories given")
    columns, k = choose_classes(list(sets.values()), per_class, classes)
    if columns == [UNCONDITIONAL]:
        k = min(k, len(dataset))
    labels = np.repeat(columns, k).tolist()
    ref, ref_idx = reference_images(dataset, columns, k)
    rows, records = [ref], [("reference", "training split", ref_idx)]
    for key, s in sets.items():
        idx = pick(s.labels, columns, k)
        rows.append(s.images(idx))
        records.append((key, str(s.root), idx))
    frame = pd.DataFrame([{"grid_row": r, "row": key, "source": src, "column": j, "label": labels[j],
                           "index": int(i)} for r, (key, src, idx) in enumerate(records)
                          for j, i in enumerate(idx)])
    return [_cells(r) for r in rows], frame, labels


def render_grid(samples: dict[str, Path], dataset, out, title: str, per_class: int = 2, classes: int = 10,
                class_name=str) -> list[Path]:
    """The grid figure (.png/.pdf) and its CSV (which sample is in which cell) at `out` (see figures.outputs)."""
    import matplotlib.pyplot as plt

    from hdit.report.figures import save

    rows, frame, labels = grid_rows(samples, dataset, per_class, classes)
    h = rows[0].shape[1]
    scale, pad = max(1, 64 // h), 2
    image = tile(rows, scale, pad)
    dpi, cell = 100, h * scale + pad
    fig, ax = plt.subplots(figsize=(image.shape[1] / dpi + 1.8, image.shape[0] / dpi + 1.2), dpi=dpi)
    ax.imshow(image, interpolation="nearest")
    ax.set_yticks([pad + cell * (i + 0.5) for i in range(len(rows))], ["reference", *samples])
    if labels[0] != UNCONDITIONAL:
        k = len(labels) // len(set(labels))  # images per label as laid out (choose_classes may show fewer)
        groups = [pad + cell * (i * k + k / 2) for i in range(len(labels) // k)]
        ax.set_xticks(groups, [class_name(c) for c in labels[::k]], rotation=45, ha="left", fontsize=7)
        ax.xaxis.tick_top()
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    fig.text(0.01, 0.0, title, fontsize=8, va="top", wrap=True)
    for side in ax.spines.values():
        side.set_visible(False)
    return save(fig, frame, out)
