"""`hdit data synth`: generated stand-ins for the paper's dataset folders, for running the paper DAG offline.

The paper profile reads ImageNet (a train folder with one sub-folder per class: 1000 of them, JPEG photos
of any aspect ratio) and FFHQ (a flat folder of 1024 x 1024 PNGs). Neither can be downloaded here, so the
`paper-smoke` workflow test writes folders with exactly those layouts and formats, filled with the
embedded shapes renderer (class k of ImageNet draws shapes class k mod 10). Everything the real folders
exercise then runs for real: the class-folder listing and label order, JPEG decoding, ADM's centre crop
of non-square images, the 1024 px pipeline, stratified reference subsets over 1000 classes.

    hdit data synth --layout imagenet --classes 1000 --per-class 1 --size 96x72 --out DIR
    hdit data synth --layout ffhq --n 6 --size 1024x1024 --out DIR
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hdit import io
from hdit.data.shapes import NUM_CLASSES, render

LAYOUTS = ("imagenet", "ffhq")


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}; expected WIDTHxHEIGHT, e.g. 96x72") from None
    if w < 8 or h < 8:
        raise ValueError(f"--size {text!r}; expected both sides >= 8 px")
    return w, h


def synth_class_name(k: int) -> str:
    """A WordNet-id-shaped folder name (ImageNet's folders are `n` + 8 digits, sorted = label order)."""
    return f"n{k:08d}"


def _image(index: int, label: int, size: tuple[int, int], seed: int) -> Image.Image:
    """A shapes scene of class `label` mod 10, rendered on the long side and cropped to W x H."""
    w, h = size
    side = max(w, h)
    # the scene of `index` has its own class; search the hash stream for one of the wanted class
    probe = np.arange(index * 64, index * 64 + 64)
    images, labels = render(probe, resolution=min(side, 64), seed=seed)
    hits = np.flatnonzero(labels == label % NUM_CLASSES)
    pick = probe[hits[0]] if len(hits) else probe[0]
    img, _ = render([pick], resolution=side, seed=seed)
    top, left = (side - h) // 2, (side - w) // 2
    return Image.fromarray(img[0, top:top + h, left:left + w])


def _save(image: Image.Image, path: Path) -> None:
    jpeg = path.suffix == ".JPEG"
    with io.atomic_path(path) as tmp:  # the format is explicit: a temporary never looks like an image
        image.save(tmp, format="JPEG" if jpeg else "PNG", **({"quality": 90} if jpeg else {}))


def synth_imagenet(out, classes: int = 1000, per_class: int = 1, size=(96, 72), seed: int = 0) -> Path:
    """`classes` folders of `per_class` JPEGs each (ImageNet's `n…/n…_k.JPEG` naming)."""
    out = Path(out)
    for k in range(classes):
        folder = out / synth_class_name(k)
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            path = folder / f"{synth_class_name(k)}_{j}.JPEG"
            if not path.exists():
                _save(_image(k * per_class + j, k, size, seed), path)
    return out


def synth_ffhq(out, n: int = 6, size=(1024, 1024), seed: int = 0) -> Path:
    """A flat folder of `n` PNGs named as FFHQ's (`00000.png`, ...)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = out / f"{i:05d}.png"
        if not path.exists():
            _save(_image(i, i, size, seed), path)
    return out


def main(args) -> int:
    size = parse_size(args.size)
    if args.layout == "imagenet":
        if args.classes < 1 or args.per_class < 1:
            raise ValueError(f"--classes {args.classes} / --per-class {args.per_class}; expected positive integers")
        synth_imagenet(args.out, args.classes, args.per_class, size, args.seed)
    else:
        if args.n < 1:
            raise ValueError(f"--n {args.n}; expected a positive integer")
        synth_ffhq(args.out, args.n, size, args.seed)
    return 0
