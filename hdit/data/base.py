"""What every dataset shares: `get_uint8(indices)` is the one method a dataset implements; batches
for the trainer ([-1, 1] float CHW) and single items are derived from it here, through `to_model_input`: the
one conversion, which the trainer runs on the device (batches cross to it as uint8, a quarter of the bytes)."""
from __future__ import annotations

import numpy as np


def to_model_input(images):
    """uint8 images [N, H, W, 3] (a torch tensor, on any device) -> float32 [N, 3, H, W] in [-1, 1]."""
    return (images.permute(0, 3, 1, 2).float() / 127.5 - 1).contiguous()


class UInt8Dataset:
    def get_uint8(self, indices) -> tuple[np.ndarray, np.ndarray]:  # images [N, H, W, 3] uint8, labels [N]
        raise NotImplementedError

    def get_batch(self, indices):
        import torch

        images, labels = self.get_uint8(indices)
        return to_model_input(torch.from_numpy(images)), torch.from_numpy(labels)

    def __getitem__(self, i: int):
        x, y = self.get_batch([i])
        return x[0], int(y[0])
