"""Step-time cost of the keyed draws (issue 22, `hdit.draws`) against the per-rank draws they replaced.

    python scripts/bench_keyed_draws.py --device cpu --threads 1 --out results/bench/keyed-draws-cpu.json

For each (row, profile, batch): the whole training step (`hdit.bench.train_step_fn`: the trainer's own
`TrainStep`, keyed draws included), the keyed draws alone (the step's `StepDraws`, the per-sample noise and the
model-RNG seeding, for one micro-batch holding the batch), and the draws of the trainer before issue 22 alone
(one generator per rank: class-dropout uniforms, stratified u of the rank's strata, one `randn` of the batch's
noise). overhead = (keyed - per-rank) / step. Draws are timed over many repetitions (they take micro- to
milliseconds), the step as `hdit bench` times it (CPU: median wall clock; CUDA: CUDA events).
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from hdit import bench, io
from hdit.diffusion import sigma_from_u
from hdit.provenance import provenance
from hdit.step import TrainStep, autocast_args, make_optimizer

CASES = {"cpu": [("E", "default", 32, 32), ("E", "paper", 128, 4)],  # row, profile, resolution, batch
         "cuda": [("E", "default", 32, 32), ("E", "paper", 128, 64)]}  # paper: 256 over 4 GPUs (Table 6)


def per_rank_draws(ts, x, labels, gen):
    """The draws of the trainer before issue 22: everything from one generator seeded per rank."""
    n, train = x.shape[0], ts.run.train
    drop = torch.rand(n, generator=gen, device=x.device) < train.cond_dropout if labels is not None else None
    u = (torch.arange(n, dtype=torch.float64, device=x.device)
         + torch.rand(n, generator=gen, dtype=torch.float64, device=x.device)) / n
    sigma = sigma_from_u(u.float(), ts.run.data.resolution)
    return drop, sigma, torch.randn(x.shape, generator=gen, device=x.device)


def keyed_draws(ts, x, step):
    d = ts.draws(step, x.shape[0])
    noise = d.noise(0, x.shape, ts.noise_gen)
    d.seed_model_rng(0)
    return d, noise


def timed(fn, device, reps: int) -> float:
    """Median seconds of `fn` over 5 rounds of `reps` calls (after one warm-up round)."""
    rounds = []
    for r in range(6):
        bench.sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        bench.sync(device)
        rounds.append((time.perf_counter() - t0) / reps)
    return statistics.median(rounds[1:])


def measure(device, row, profile, resolution, batch, step_iters) -> dict:
    plan = bench.Plan(profile, resolution, (batch,), (resolution,), batch, 1, warmup=2, iters=step_iters)
    b = bench.Bench(device, plan, False, "auto", 50, {})
    run, model, net = bench.build(b, row, resolution)
    ts = TrainStep(run, model, net, copy.deepcopy(model).requires_grad_(False), make_optimizer(model, run),
                   autocast_args(device, run.train.precision))  # as hdit.bench.train_step_fn builds it
    x = torch.rand(batch, run.model.in_channels, resolution, resolution, device=device) * 2 - 1
    labels = torch.zeros(batch, dtype=torch.long, device=device) if run.model.num_classes else None
    steps = iter(range(10 ** 9))
    model.train()
    step_s = bench.time_per_iter(lambda: ts(x, labels, next(steps)), device, plan.warmup, plan.iters)
    gen = torch.Generator(device).manual_seed(0)
    reps = 50 if device.type == "cuda" or resolution <= 32 else 10
    keyed_s = timed(lambda: keyed_draws(ts, x, next(steps)), device, reps)
    legacy_s = timed(lambda: per_rank_draws(ts, x, labels, gen), device, reps)
    return {"row": row, "profile": profile, "resolution": resolution, "batch": batch,
            "params": sum(p.numel() for p in model.parameters()), "step_ms": step_s * 1e3,
            "keyed_draws_ms": keyed_s * 1e3, "per_rank_draws_ms": legacy_s * 1e3,
            "overhead_pct_of_step": 100 * (keyed_s - legacy_s) / step_s}


def machine(device: torch.device) -> str:
    """CPU model and core count (from /proc/cpuinfo on Linux), or torch's name of the GPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--step-iters", type=int, default=None, help="timed training steps per case")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    records = []
    for row, profile, res, batch in CASES[a.device]:
        iters = a.step_iters or (20 if a.device == "cuda" else 5 if profile == "default" else 2)
        rec = measure(device, row, profile, res, batch, iters)
        print(json.dumps(rec), flush=True)
        records.append(rec)
    meta = {"command": " ".join([Path(sys.executable).name] + sys.argv), "machine": machine(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": "bf16-autocast" if a.device == "cuda" else "fp32",
            "compile": False, "provenance": provenance(device), "cases": records,
            "note": "overhead = (keyed - per-rank draws) / step; draws timed alone over many repetitions, so the "
                    "ratio holds on a busy machine even when the absolute step times drift"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(a.out, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
