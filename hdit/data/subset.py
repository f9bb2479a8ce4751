"""Which images of a dataset split a reference set (FID statistics, `hdit data export`) uses.

The ADM evaluation suite the paper used compares samples against Inception statistics of the WHOLE
training set. Where a user asks for fewer images (`reference_n`), the subset must still represent the
whole distribution: a seeded random subset, stratified by class for class-conditional data (the first N
files of a sorted ImageNet listing would be the first few dozen classes). The selection record says how
the images were chosen, so a number computed on a subset is never mistaken for the full protocol.
"""
from __future__ import annotations

import hashlib

import numpy as np

WHOLE_SPLIT = "whole split"
STRATIFIED = "seeded class-stratified random subset (largest-remainder allocation)"
UNIFORM = "seeded uniform random subset"


def _allocate(class_sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Images per class, proportional to class size (Hamilton's largest remainder), every class >= 1 when
    n >= number of classes, and never more than a class holds. Equal remainders (e.g. fewer images than
    classes) are ordered at random, so the classes that get the remainder are a random choice."""
    quota = class_sizes * n / class_sizes.sum()
    take = np.floor(quota).astype(np.int64)
    if n >= len(class_sizes):
        take = np.maximum(take, 1)
    take = np.minimum(take, class_sizes)
    shuffled = rng.permutation(len(class_sizes))
    remainder = (quota - np.floor(quota))[shuffled]
    order = shuffled[np.argsort(-remainder, kind="stable")]  # largest remainders first, ties at random
    i = 0
    while take.sum() < n:  # hand out the remainder one image at a time, skipping full classes
        c = order[i % len(order)]
        if take[c] < class_sizes[c]:
            take[c] += 1
        i += 1
    while take.sum() > n:  # the >= 1 floor can overshoot: take back from the largest allocations
        take[np.argmax(take)] -= 1
    return take


def select_subset(labels: np.ndarray | None, size: int, n: int | None, seed: int = 0) -> tuple[np.ndarray, dict]:
    """-> (sorted indices, selection record). `labels` (int per image) or None for unconditional data."""
    if n is None or n >= size:
        if n is not None and n > size:
            raise ValueError(f"n={n} exceeds the {size} images of the split; expected n <= {size} (or None = all)")
        return np.arange(size), {"how": WHOLE_SPLIT, "n": size, "split_size": size, "seed": None}
    if n < 1:
        raise ValueError(f"n={n}; expected a positive number of images (or None = the whole split)")
    rng = np.random.default_rng([seed, n, size])
    if labels is None:
        idx = np.sort(rng.choice(size, n, replace=False))
        return idx, {"how": UNIFORM, "n": n, "split_size": size, "seed": seed}
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    take = _allocate(np.bincount(inverse), n, rng)
    chosen = [rng.choice(np.flatnonzero(inverse == c), k, replace=False) for c, k in enumerate(take) if k]
    idx = np.sort(np.concatenate(chosen))
    record = {"how": STRATIFIED, "n": n, "split_size": size, "seed": seed, "classes": len(classes),
              "classes_represented": int((take > 0).sum()), "per_class_min": int(take.min()),
              "per_class_max": int(take.max())}
    return idx, record


def selection_digest(indices: np.ndarray) -> str:
    """sha256 of the selected indices (part of a reference set's identity)."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()
