"""Inception features of an image set, in batches on the feature device (GPU when present)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from hdit.metrics.images import ImageSet
from hdit.metrics.inception import InceptionNet, check_mode, clean_resizer


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def open_images(root, mode: str) -> ImageSet:
    """The image set with the mode's per-image CPU resize (clean: PIL bicubic; legacy: on the device)."""
    return ImageSet(root, resize=clean_resizer() if check_mode(mode) == "clean" else None)


@contextlib.contextmanager
def _full_fp32():
    """FID is defined on fp32 Inception activations: no TF32 convolutions/matmuls on Ampere+ GPUs."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def iter_features(images: ImageSet, net: InceptionNet, mode: str, device=None, batch_size: int | None = None,
                  workers: int | None = None, desc: str = "inception", verbose: bool = True) -> Iterator[np.ndarray]:
    """Yield float32 [B, 2048] feature batches of all images, in order."""
    device = torch.device(device or default_device())
    cuda = device.type == "cuda"
    batch_size = batch_size or (128 if cuda else 32)
    workers = (min(8, (os.cpu_count() or 2) - 1) if cuda else 0) if workers is None else workers
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=cuda)
    net.to(device)
    with _full_fp32(), torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not verbose):
            yield net.features(batch.to(device, non_blocking=True), mode).float().cpu().numpy()
