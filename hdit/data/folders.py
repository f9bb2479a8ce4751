"""Image-folder datasets: ImageNet in class-folder layout and FFHQ as a plain folder of images.

Preprocessing follows ADM / DiT's `center_crop_arr`: halve the image with a BOX filter while its short
side is >= 2 * size, resize with BICUBIC so the short side equals `size`, centre-crop to size x size.
Which files count and which images are accepted (mode, bit depth, size, no hidden files) follow the rules
shared with the FID inputs (`hdit.imagefile`). Images stay uint8 HWC here; the trainer converts its batch to
float32 CHW in [-1, 1] on its device (`hdit.data.to_model_input`). Nothing is augmented here: FFHQ-1024's
non-leaking augmentation (flips among its transforms) runs on the device in the training step (`hdit.step`,
`hdit.data.augment`); the ImageNet rows train without flips. `hdit data prepare` stores `load_image`'s output
for a whole split once (`hdit.data.prepare`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from hdit.data.base import UInt8Dataset
from hdit.errors import HarnessError
from hdit.imagefile import IMAGE_EXTENSIONS, ImageFileError, is_hidden, list_images, open_rgb


class DataError(HarnessError):
    """A dataset folder or image that cannot be used."""


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop: BOX halvings, BICUBIC resize of the short side to `size`, centre crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top: top + size, left: left + size]


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode, check (`hdit.imagefile` rules) and crop one image -> uint8 [size, size, 3]. Errors name the path."""
    try:
        im = open_rgb(path)
    except ImageFileError as e:
        raise DataError(str(e)) from None
    arr = center_crop_arr(im, size)
    if arr.shape != (size, size, 3):
        raise DataError(f"{path}: got an array of shape {arr.shape}; expected ({size}, {size}, 3)")
    return arr


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """Class sub-folder -> its images, for an ImageNet-layout folder (hidden folders are not classes); every
    class must hold images (an empty folder counted as a class would shift every later label)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not is_hidden(d, root))
    if not classes:
        raise DataError(f"data folder {str(root)!r} has no class sub-folders (ImageNet layout: "
                        "ROOT/<class>/<image>)")
    files = {c: list_images(root / c) for c in classes}
    empty = [c for c in classes if not files[c]]
    if empty:
        shown = ", ".join(repr(c) for c in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(f"data folder {str(root)!r}: class folder(s) {shown} hold no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}); every sub-folder is a class: add its images or move "
                        "the folder out")
    return files


def _check_dir(path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"data folder {str(path)!r} does not exist or is not a directory")
    return path


class ImageFolderDataset(UInt8Dataset):
    """Images under `root` -> (float32 CHW tensor in [-1, 1], label).

    `class_folders=True` (ImageNet): each sub-folder of `root` is a class, labels in sorted folder
    order. `class_folders=False` (FFHQ): every image under `root` (recursively), label 0, unconditional.
    """

    def __init__(self, root, resolution: int, class_folders: bool = True):
        self.root, self.resolution = _check_dir(root), resolution
        if class_folders:
            per_class = _class_folders(self.root)
            self.classes = list(per_class)
            self.files = [(f, k) for k, c in enumerate(self.classes) for f in per_class[c]]
        else:
            self.classes = []
            self.files = [(f, 0) for f in list_images(self.root)]
        if not self.files:
            raise DataError(f"data folder {str(self.root)!r} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def get_uint8(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N, H, W, 3] and int64 labels [N]."""
        images = np.stack([load_image(self.files[i][0], self.resolution) for i in indices])
        return images, np.array([self.files[i][1] for i in indices], dtype=np.int64)

    def labels(self) -> np.ndarray | None:
        """Class of every image (None for an unconditional folder such as FFHQ)."""
        return np.array([k for _, k in self.files], dtype=np.int64) if self.classes else None

    def identity(self) -> dict:
        """The folder's content as far as it can be known without decoding: sha256 over every image's relative
        path and byte size, in dataset order (a copied dataset keeps it; an edited file changes its size or,
        rarely not, which the content hash recorded while streaming would still reveal)."""
        h = hashlib.sha256()
        for path, label in self.files:
            h.update(f"{path.relative_to(self.root)}\0{path.stat().st_size}\0{label}\n".encode())
        return {"dataset": "folder", "class_folders": bool(self.classes), "classes": len(self.classes),
                "images": len(self.files), "manifest_sha256": h.hexdigest(), "resolution": self.resolution,
                "preprocessing": "ADM center crop (BOX halvings, BICUBIC, centre crop)"}



def imagenet(root, resolution: int, split: str = "train") -> ImageFolderDataset:
    """ImageNet in class-folder layout: ROOT/<wnid>/*.JPEG, or ROOT/<split>/<wnid>/*.JPEG."""
    root = _check_dir(root)
    if (root / split).is_dir():
        root = root / split
    return ImageFolderDataset(root, resolution, class_folders=True)


def ffhq(root, resolution: int) -> ImageFolderDataset:
    """FFHQ (or any unconditional set): every image below ROOT."""
    return ImageFolderDataset(root, resolution, class_folders=False)
