"""Class accuracy of conditional samples on the embedded `shapes` data (issue 13).

The `shapes` images have known classes (`hdit.data.shapes`: 5 shapes x 2 colours), so a sample set drawn
with class labels can be scored directly: an independent classifier, trained once on the embedded
training split, labels every sample, and the class accuracy is the fraction classified as the class the
sample was conditioned on (chance: 1 / 10). It says whether a model draws recognisable shapes of the
right class, which a small-sample FID at toy scale cannot.

- Classifier: a small CNN (`ShapesCNN`), trained deterministically (seeded, CPU, a fixed thread count)
  on the first `train_n` images of the training split; its accuracy on the first `test_n` images of the
  test split is measured once and recorded.
- Cache: the trained weights are stored once as `cache_dir/<key>.pt` (written atomically), keyed by the
  dataset identity (`ShapesDataset.identity()`: generator seed, split, renderer version, resolution),
  the hyperparameters (`ClassifierConfig`) and `CODE_VERSION`; any other setting trains another one.
- Scoring: the `.npz` shards of `hdit sample` (uint8 NHWC `images`, int64 `labels`), with a 95% Wilson
  interval on the accuracy (binomial over the n samples) and the accuracy per conditioning class.

    hdit classify --samples results/samples/default/E/seed0-cfg1.0-n200-steps25 --out classacc.json
    hdit classify --fit --resolution 32 --out classifier.json        # only train (or find) the classifier
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hdit.integrity import DamagedFileError, check_set, load_npz, load_torch
from hdit.io import WriteError, check_writable, torch_save, write_json
from hdit.metrics.images import list_shards, shard_fix
from hdit.provenance import provenance

CODE_VERSION = 1  # bump when the network, its training or its evaluation changes what a key stands for
DEFAULT_CACHE_DIR = Path("results/cache/classifier")


class ClassifyError(ValueError):
    """Bad input to the class-accuracy metric: names the value and what was expected."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything the trained classifier is a function of, besides the data and the code."""

    resolution: int = 32
    train_n: int = 16_384  # first images of the training split
    test_n: int = 10_000  # first images of the test split (its accuracy is recorded)
    epochs: int = 1  # fresh procedural images beat repeated epochs (1 x 16,384: test accuracy 0.9999)
    batch_size: int = 64
    lr: float = 3e-3  # AdamW peak lr, linear warm-up then cosine decay to 0 (one cycle)
    warmup_frac: float = 0.05
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (16, 32, 64)  # conv channels per resolution stage
    seed: int = 0
    threads: int = 1  # torch CPU threads while training: results depend on it

    def __post_init__(self):
        for name in ("resolution", "train_n", "test_n", "epochs", "batch_size", "threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ClassifyError(f"classifier {name}={getattr(self, name)!r}; expected a positive integer")


class ShapesCNN(nn.Module):
    """Per stage two 3x3 conv + BatchNorm + ReLU, then 2x max-pool (none after the last); global average
    pool; linear head. Input: float [B, 3, H, W] in [-1, 1] (the training data's scaling)."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with n torch CPU threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], as the diffusion models see the data."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _dataset(split: str, resolution: int, size: int):
    from hdit.data.shapes import ShapesDataset

    return ShapesDataset(resolution, split=split, seed=0, size=size)


def classifier_key(cfg: ClassifierConfig) -> str:
    """Content key: dataset identity (both splits) + hyperparameters + code version."""
    fields = {"code": CODE_VERSION, "config": asdict(cfg),
              "train": _dataset("train", cfg.resolution, cfg.train_n).identity(),
              "test": _dataset("test", cfg.resolution, cfg.test_n).identity()}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return f"shapes-{cfg.resolution}px-{digest}"


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_classifier(cfg: ClassifierConfig, num_classes: int = 10, verbose: bool = False) -> ShapesCNN:
    """Train `ShapesCNN` on the first cfg.train_n training images; deterministic for a given cfg."""
    images, labels = _dataset("train", cfg.resolution, cfg.train_n).get_uint8(np.arange(cfg.train_n))
    x_all, y_all = to_input(images), torch.from_numpy(labels)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = ShapesCNN(cfg.widths, num_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_epoch = cfg.train_n // cfg.batch_size  # the last partial batch of each epoch is dropped
        total = per_epoch * cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: _lr_factor(s, total, max(1, round(cfg.warmup_frac * total))))
        rng = np.random.default_rng([cfg.seed, 1])
        model.train()
        for epoch in range(cfg.epochs):
            perm = torch.from_numpy(rng.permutation(cfg.train_n))
            for i in range(per_epoch):
                idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if verbose:
                print(f"classifier epoch {epoch + 1}/{cfg.epochs}: last batch loss {loss.item():.4f}",
                      file=sys.stderr)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500, threads: int | None = None) -> np.ndarray:
    """Predicted class of each uint8 NHWC image."""
    model.eval()
    out = []
    with torch_threads(threads or torch.get_num_threads()):
        for i in range(0, len(images), batch_size):
            out.append(model(to_input(images[i:i + batch_size])).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, dict]:
    """{class index: {name, n, accuracy}} over the classes present in `labels` (None where n = 0)."""
    from hdit.data.shapes import class_name

    table = {}
    for c in range(num_classes):
        m = labels == c
        n = int(m.sum())
        table[str(c)] = {"name": class_name(c), "n": n, "accuracy": float((pred[m] == c).mean()) if n else None}
    return table


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _evaluate(model: nn.Module, cfg: ClassifierConfig, num_classes: int) -> dict:
    images, labels = _dataset("test", cfg.resolution, cfg.test_n).get_uint8(np.arange(cfg.test_n))
    pred = predict(model, images, threads=cfg.threads)
    return {"test_accuracy": float((pred == labels).mean()), "test_n": cfg.test_n,
            "test_per_class": {c: v["accuracy"] for c, v in per_class_accuracy(pred, labels, num_classes).items()}}


def load_classifier(cfg: ClassifierConfig = ClassifierConfig(), cache_dir=DEFAULT_CACHE_DIR,
                    verbose: bool = False) -> tuple[ShapesCNN, dict]:
    """The classifier of `cfg` from `cache_dir/<key>.pt`, trained (and tested, and cached) if missing.

    -> (model in eval mode, info: key, path, cached, test_accuracy, test_per_class, config, ...)."""
    from hdit.data.shapes import NUM_CLASSES

    key = classifier_key(cfg)
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:  # a cache: damaged, or without its checksum, it is trained again
            blob = load_torch(path, "it is trained again", ("state_dict", "info"))
            model = ShapesCNN(cfg.widths, NUM_CLASSES)
            model.load_state_dict(blob["state_dict"])
            return model.eval(), {**blob["info"], "path": str(path), "cached": True}
        except DamagedFileError as e:
            warnings.warn(f"damaged cache entry: {e}", stacklevel=2)
    t0 = time.perf_counter()
    model = train_classifier(cfg, NUM_CLASSES, verbose=verbose)
    train_s = time.perf_counter() - t0
    info = {"key": key, "code_version": CODE_VERSION, "config": asdict(cfg), "train_n": cfg.train_n,
            **_evaluate(model, cfg, NUM_CLASSES), "train_wall_s": round(train_s, 2),
            "dataset": _dataset("train", cfg.resolution, cfg.train_n).identity(), "provenance": provenance()}
    torch_save({"state_dict": model.state_dict(), "info": info}, path)
    if verbose:
        print(f"classifier {key}: test accuracy {info['test_accuracy']:.4f} ({train_s:.1f} s) -> {path}",
              file=sys.stderr)
    return model, {**info, "path": str(path), "cached": False}


META_KEYS = ("config_id", "profile", "n", "seed", "sampler", "steps", "cfg_scale", "checkpoint_step")


def load_samples(samples_dir) -> tuple[np.ndarray, np.ndarray, dict]:
    """(uint8 images [N, H, W, 3], int64 conditioning labels [N], meta.json subset) of a sample directory."""
    root = Path(samples_dir)
    if not root.is_dir():
        raise ClassifyError(f"--samples {str(root)!r} is not a directory; expected a sample directory of "
                            "`hdit sample` (shard-*.npz)")
    shards = list_shards(root)
    if not shards:
        raise ClassifyError(f"{root}: no shard-*.npz files; expected the output of `hdit sample`")
    meta = check_set(root, shards)  # exactly the shards its meta.json records
    arrays = [load_npz(p, ("images", "labels"), shard_fix(p), "shard") for p in shards]
    images = np.concatenate([a["images"] for a in arrays])
    labels = np.concatenate([a["labels"] for a in arrays]).astype(np.int64)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) != len(labels):
        raise ClassifyError(f"{root}: images {images.shape} {images.dtype} with {len(labels)} labels; expected "
                            "uint8 [N, H, W, 3] and one label per image")
    if meta.get("n", len(images)) != len(images):
        raise ClassifyError(f"{root}: meta.json says n={meta.get('n')} but the shards hold {len(images)} images "
                            "(an incomplete or mixed sample set)")
    return images, labels, {k: meta[k] for k in META_KEYS if k in meta}


def class_accuracy(images: np.ndarray, labels: np.ndarray, model: nn.Module, num_classes: int = 10,
                   threads: int | None = None) -> dict:
    """Fraction of images classified as their conditioning label, with a 95% Wilson interval and per class."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ClassifyError(f"conditioning label {int(labels[bad][0])} found; expected class labels in "
                            f"[0, {num_classes}) (class accuracy needs a class-conditional sample set; "
                            "unconditional samples store -1)")
    pred = predict(model, images, threads=threads)
    k, n = int((pred == labels).sum()), len(labels)
    return {"accuracy": k / n, "accuracy_ci95": list(wilson_interval(k, n)), "n": n, "chance": 1 / num_classes,
            "per_class": per_class_accuracy(pred, labels, num_classes),
            "predicted_counts": np.bincount(pred, minlength=num_classes).tolist()}


def score_samples(samples_dir, cfg: ClassifierConfig | None = None, cache_dir=DEFAULT_CACHE_DIR,
                  verbose: bool = False) -> dict:
    """The class-accuracy record of a sample directory (the JSON `hdit classify` writes)."""
    from hdit.data.shapes import NUM_CLASSES

    images, labels, meta = load_samples(samples_dir)
    cfg = cfg or ClassifierConfig(resolution=images.shape[1])
    if images.shape[1:3] != (cfg.resolution, cfg.resolution):
        raise ClassifyError(f"{samples_dir}: images are {images.shape[1]}x{images.shape[2]}; the classifier "
                            f"reads {cfg.resolution}x{cfg.resolution} shapes images")
    model, info = load_classifier(cfg, cache_dir, verbose)
    result = class_accuracy(images, labels, model, NUM_CLASSES, threads=cfg.threads)
    return {**result, "samples": str(samples_dir), "sample_meta": meta, "classifier": info,
            "provenance": provenance()}


# ----------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--samples", type=Path, help="class-conditional sample directory of `hdit sample` "
                      "(shard-*.npz with `images` and `labels`) on the shapes data")
    what.add_argument("--fit", action="store_true", help="only train (or find in the cache) the classifier and "
                      "write its record (test accuracy, key)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write (atomically)")
    p.add_argument("--resolution", type=int, default=None,
                   help="image size of the classifier (default: the samples' size; 32 with --fit)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="trained classifiers, by key")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    try:
        check_writable(args.out)  # before the work
        if args.resolution is not None and args.resolution < 4:
            raise ClassifyError(f"--resolution {args.resolution}; expected an integer >= 4")
        cfg = ClassifierConfig(resolution=args.resolution) if args.resolution else None
        if args.fit:
            _, info = load_classifier(cfg or ClassifierConfig(), args.cache_dir, verbose=not args.quiet)
            result = {**info, "provenance": provenance()}
            line = f"classifier {info['key']}: test accuracy {info['test_accuracy']:.4f}"
        else:
            result = score_samples(args.samples, cfg, args.cache_dir, verbose=not args.quiet)
            lo, hi = result["accuracy_ci95"]
            line = (f"class accuracy {result['accuracy']:.4f} [{lo:.3f}, {hi:.3f}] on {result['n']} samples "
                    f"(chance {result['chance']:.2f}; classifier test accuracy "
                    f"{result['classifier']['test_accuracy']:.4f})")
    except (ClassifyError, WriteError) as e:
        print(f"hdit classify: error: {e}", file=sys.stderr)
        return 2
    try:
        write_json(args.out, result)
    except WriteError as e:  # the finished result is not lost: it goes to stdout
        print(json.dumps(result, indent=2, default=str))
        print(f"hdit classify: error: {e}. The result is printed above (stdout) as JSON", file=sys.stderr)
        return 2
    print(line)
    return 0
