"""Datasets and the resumable training batch stream.

Every dataset is map-style with `__len__`, `num_classes`, `resolution`, `get_uint8(indices)` ->
(uint8 [N, H, W, 3], int64 [N]) and `get_batch(indices)` -> (float32 [N, 3, H, W] in [-1, 1], int64 [N]).
ImageNet / FFHQ are read from their image folders (`hdit.data.folders`, decoding every time) or from a split
prepared once by `hdit data prepare` (`hdit.data.prepared`, the same pixels); `--data` takes either.
The training stream yields uint8 batches; the trainer moves them to the device and converts them there
(`to_model_input`).
"""
from __future__ import annotations

import numpy as np
import torch

from hdit.data.base import to_model_input
from hdit.data.folders import DataError, ffhq, imagenet
from hdit.data.prepared import PreparedDataset, is_prepared
from hdit.data.shapes import ShapesDataset

DATASETS = ("shapes", "imagenet", "ffhq")

__all__ = ["DATASETS", "BatchStream", "DataError", "PreparedDataset", "build_dataset", "to_model_input"]


def build_dataset(data_cfg, path=None, split: str = "train", seed: int = 0):
    """The dataset of a DataConfig (`name`, `resolution`). ImageNet/FFHQ read `path`; shapes needs none."""
    name, res = data_cfg.name, data_cfg.resolution
    if name == "shapes":
        if path is not None:
            raise DataError(f"--data {str(path)!r} given for dataset 'shapes', which is generated in memory and "
                            "reads no files; drop --data (or train a config whose dataset is read from disk)")
        return ShapesDataset(res, split=split, seed=seed)
    if name not in DATASETS:
        raise DataError(f"dataset {name!r}; expected one of {DATASETS}")
    if path is None:
        raise DataError(f"dataset {name!r} is read from disk: pass its folder with --data PATH "
                        + ("(ImageNet class-folder layout ROOT/<wnid>/*.JPEG)" if name == "imagenet"
                           else "(a folder of images)"))
    if is_prepared(path):
        return open_prepared(path, name, res, split)
    return imagenet(path, res, split) if name == "imagenet" else ffhq(path, res)


def open_prepared(path, name: str, resolution: int, split: str = "train") -> PreparedDataset:
    """A prepared split, which must be the dataset, resolution and split asked for."""
    ds = PreparedDataset(path)
    got, want = (ds.name, ds.resolution, ds.split), (name, resolution, split)
    if got != want:
        raise DataError(f"--data {str(path)!r} is {ds.name} prepared at {ds.resolution} px (split {ds.split!r}); "
                        f"expected {name} at {resolution} px (split {split!r}): prepare that "
                        f"(`hdit data prepare --dataset {name} --resolution {resolution} ...`) or pass its folder")
    return ds


class _Fetch(torch.utils.data.Dataset):
    """Worker-side fetch of one batch of indices (used with DataLoader workers)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, indices):
        images, labels = self.dataset.get_uint8(indices)
        return torch.from_numpy(images), torch.from_numpy(labels)


class BatchStream:
    """Deterministic, resumable training batches.

    The global sample stream is a sequence of epochs, each a permutation of the dataset drawn from
    numpy's PCG64 seeded with (seed, epoch). Step k of rank r takes global positions
    k * B * world + r * B ... + B - 1 (B = per-rank batch), so a batch is a pure function of (seed, step,
    rank): resuming at a step reproduces the uninterrupted stream exactly.

    A batch is (uint8 images [B, H, W, 3], int64 labels [B]) in pinned memory when CUDA is there (so that
    `.to(device, non_blocking=True)` overlaps the copy); `to_model_input` makes the model's input of it on the
    device. Augmentation happens later, on the device (`hdit.step`, FFHQ's non-leaking augmentation).
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, num_workers: int = 0, pin_memory: bool | None = None):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.step = rank, world_size, start_step
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._epoch, self._perm = None, None
        self._iter = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._epoch = epoch
        return self._perm

    def keys(self, step: int) -> np.ndarray:
        """The dataset indices of this rank's batch at `step`."""
        n = len(self.dataset)
        start = (step * self.world_size + self.rank) * self.batch_size
        pos = np.arange(start, start + self.batch_size)
        indices = np.empty(len(pos), np.int64)
        for epoch in np.unique(pos // n):
            m = pos // n == epoch
            indices[m] = self._permutation(int(epoch))[pos[m] % n]
        return indices

    def _key_iter(self, start: int):
        step = start
        while True:
            yield self.keys(step)
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_workers == 0:
            images, labels = self.dataset.get_uint8(self.keys(self.step))
            batch = torch.from_numpy(images), torch.from_numpy(labels)
            if self.pin_memory:
                batch = tuple(t.pin_memory() for t in batch)
        else:
            if self._iter is None:
                loader = torch.utils.data.DataLoader(_Fetch(self.dataset), sampler=self._key_iter(self.step),
                                                     batch_size=None, num_workers=self.num_workers,
                                                     pin_memory=self.pin_memory, persistent_workers=True,
                                                     prefetch_factor=4)
                self._iter = iter(loader)
            batch = next(self._iter)
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"step": self.step, "samples_seen": self.step * self.batch_size * self.world_size,
                "epoch": (self.step * self.batch_size * self.world_size) // len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self._iter = int(state["step"]), None
