"""`hdit bench-loader`: images per second per core of the training input, raw folders against prepared splits.

    hdit bench-loader --out results/bench/loader-cpu.json

One thread, one process (so the figure is per core). At 128 and 256 px the source is a folder of generated
ImageNet-like JPEGs (500 x 375 or 375 x 500, quality 90, textured to ~100-130 KB like ImageNet's photos); at
1024 px FFHQ-like 1024 x 1024 PNGs. Each path is timed end to end to the batch the trainer receives:

- raw: `BatchStream` over the image folder (decode, ADM crop, stack) -> uint8 batch;
- prepared: `hdit data prepare` once (timed apart: it is the one-off cost), then `BatchStream` over the
  prepared split (random gathers from the memory-mapped chunks) -> uint8 batch;
- both also with `to_model_input` on the CPU (a CPU trainer's float batch; on a GPU node it runs on the device).

The JSON records the machine, versions and command, plus the cores an 8-GPU node needs for each path: E at
128 px at 2,000 img/s per GPU (docs/PERFORMANCE.md) and FFHQ-1024 at that rate scaled by Table 6's GFLOPs
(31 / 206). Numbers from a shared machine are noisy: the ratios are what carry over.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hdit.io import write_json
from hdit.provenance import provenance

E_GPU_IMG_S = 2000  # docs/PERFORMANCE.md: HDiT E training throughput target per GPU (128 px)
GFLOPS = {"E": 31, "ffhq-1024": 206}  # Table 6, per forward
GPUS_PER_NODE = 8


def photo_like(rng: np.random.Generator, w: int, h: int, grain: float) -> np.ndarray:
    """Colour fields at three scales plus grain: JPEGs and PNGs of photographs' size and decoding cost."""
    acc = np.zeros((h, w, 3), np.float32)
    for cell, amp in ((64, 60), (16, 35), (4, 20)):
        small = rng.normal(0, 1, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        big = [np.asarray(Image.fromarray(small[..., c]).resize((w + 2 * cell, h + 2 * cell), Image.BICUBIC))
               for c in range(3)]
        acc += amp * np.stack(big, -1)[:h, :w]
    acc += rng.normal(0, grain, (h, w, 3))
    return np.clip(128 + acc, 0, 255).astype(np.uint8)


def write_source(root: Path, kind: str, n: int, seed: int = 0) -> dict:
    """`n` generated images: 'imagenet' (JPEG class folders) or 'ffhq' (1024 px PNGs); returns their sizes."""
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(n):
        if kind == "imagenet":
            w, h = (500, 375) if i % 4 else (375, 500)
            path = root / f"n{i % 10:08d}" / f"{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo_like(rng, w, h, 28)).save(path, quality=90)
        else:
            path = root / f"{i:05d}.png"
            root.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo_like(rng, 1024, 1024, 1)).save(path)
        sizes.append(path.stat().st_size)
    return {"kind": kind, "images": n, "mean_kb": round(float(np.mean(sizes)) / 1024, 1),
            "format": "JPEG quality 90, 500x375 / 375x500" if kind == "imagenet" else "PNG 1024x1024"}


def stream_rate(dataset, batch: int, min_seconds: float, convert: bool) -> float:
    """img/s of `BatchStream` batches (uint8, or converted to the float model input) over >= min_seconds."""
    from hdit.data import BatchStream, to_model_input

    stream = BatchStream(dataset, batch, seed=0, pin_memory=False)
    next(stream)  # first touch (file cache, memory maps) outside the timing
    count, start = 0, time.perf_counter()
    while True:
        x, _ = next(stream)
        if convert:
            x = to_model_input(x)
        count += len(x)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return count / elapsed


def png_alternative(images: np.ndarray, level: int, min_seconds: float) -> dict:
    """The storage not chosen: edm2's dataset_tool stores uncompressed PNGs (level 0) in a zip; level 6 is
    deflated. Bytes per image relative to raw uint8, and img/s of decoding them from memory on one core."""
    import io

    blobs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="png", compress_level=level)
        blobs.append(buf.getvalue())
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for b in blobs:
            np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
        count += len(blobs)
    return {"png_level": level, "size_vs_uint8": round(sum(map(len, blobs)) / images.nbytes, 3),
            "decode_img_s": round(count / (time.perf_counter() - start), 1)}


def sha256_gb_s(min_seconds: float = 1.0) -> float:
    """Checksum throughput of one core (what verifying a prepared split at opening costs)."""
    import hashlib

    buf, count, start = np.random.default_rng(0).bytes(64 << 20), 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        hashlib.sha256(buf).digest()
        count += len(buf)
    return round(count / 1e9 / (time.perf_counter() - start), 2)


def bench_resolution(work: Path, resolution: int, n: int, batch: int, min_seconds: float) -> dict:
    from hdit.data.folders import ffhq, imagenet
    from hdit.data.prepare import prepare
    from hdit.data.prepared import PreparedDataset

    kind = "ffhq" if resolution >= 1024 else "imagenet"
    src = work / f"{kind}-{resolution}"
    source = write_source(src, kind, n, seed=resolution)
    raw = imagenet(src, resolution) if kind == "imagenet" else ffhq(src, resolution)
    batch = min(batch, n)
    rec = {"resolution": resolution, "source": source, "batch": batch}
    rec["raw_img_s"] = stream_rate(raw, batch, min_seconds, convert=False)
    rec["raw_float_img_s"] = stream_rate(raw, batch, min_seconds, convert=True)
    start = time.perf_counter()
    manifest = prepare(kind, src, resolution, work / f"prepared-{resolution}", workers=1, progress=False)
    rec["prepare_img_s"] = n / (time.perf_counter() - start)
    ds = PreparedDataset(work / f"prepared-{resolution}", check_source=False)
    rec["prepared_bytes"] = manifest["bytes"]
    rec["prepared_img_s"] = stream_rate(ds, batch, min_seconds, convert=False)
    rec["prepared_float_img_s"] = stream_rate(ds, batch, min_seconds, convert=True)
    rec["speedup"] = rec["prepared_img_s"] / rec["raw_img_s"]
    rec["bytes_per_image"] = resolution * resolution * 3
    crops = ds.get_uint8(np.arange(min(n, 32)))[0]
    rec["png_alternatives"] = [png_alternative(crops, level, min_seconds / 3) for level in (0, 6)]
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in rec.items()}


def node_estimate(records: dict) -> dict:
    """Cores an 8-GPU node needs to feed its trainers, per path (loading only; trainers need their own)."""
    out = {}
    for name, res, per_gpu in (("E-128", 128, E_GPU_IMG_S),
                               ("ffhq-1024", 1024, E_GPU_IMG_S * GFLOPS["E"] / GFLOPS["ffhq-1024"])):
        if res not in records:
            continue
        need = GPUS_PER_NODE * per_gpu
        out[name] = {"img_s_per_gpu": round(per_gpu), "img_s_per_node": round(need),
                     "cores_raw": math.ceil(need / records[res]["raw_img_s"]),
                     "cores_prepared": math.ceil(need / records[res]["prepared_img_s"])}
    return out


def machine() -> dict:
    import PIL

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "pillow": PIL.__version__,
            "platform": platform.platform()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("results/bench/loader-cpu.json"))
    p.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 1024])
    p.add_argument("--images", type=int, default=300, help="generated JPEGs per resolution (1024 px: a tenth)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per measurement")
    p.add_argument("--workdir", type=Path, default=None, help="where the generated folders go (default: a temp dir)")


def main(args) -> int:
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="hdit-loader-", dir=args.workdir))
    try:
        records = {}
        for res in args.resolutions:
            n = max(8, args.images // 10) if res >= 1024 else args.images
            records[res] = bench_resolution(work, res, n, args.batch, args.seconds)
            r = records[res]
            print(f"{res:>5} px: raw {r['raw_img_s']:8.1f} img/s  prepared {r['prepared_img_s']:10.1f} img/s  "
                  f"({r['speedup']:.0f}x)  prepare {r['prepare_img_s']:.1f} img/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"kind": "loader benchmark", "threads": 1, "machine": machine(), "provenance": provenance("cpu"),
              "sha256_gb_s_per_core": sha256_gb_s(),
              "results": list(records.values()), "node_estimate": node_estimate(records),
              "note": "img/s of one core (one thread, one process) to the uint8 batch BatchStream yields; *_float_* "
                      "adds the CPU conversion to [-1, 1] NCHW. Measured on a shared machine: the ratios carry "
                      "over, the absolute figures are noisy."}
    write_json(args.out, result)
    print(f"-> {args.out}")
    return 0
