"""`hdit bench`: training throughput, forward latency / peak memory and sampling throughput.

Suites (one JSON record per measurement, docs/PERFORMANCE.md):
- train:   images/s of full training steps (EDM loss, backward, AdamW step, EMA update) in steady state
           after warm-up, synthetic data already on the device (data loading is not measured).
- forward: model forward latency and peak memory at the base resolution, batch sizes as for training.
- scaling: forward latency and peak memory of HDiT E vs DiT-B/4 over resolutions (Figure 2, measured);
           the batch shrinks with the token count: batch(r) = max(1, scaling_batch * (base / r)^2).
- sample:  images/s of 50-step DPM++(3M) SDE sampling (Karras schedule, the config's sampler settings).
- na:      neighborhood attention alone (the issue's shape: batch 64, 32x32 tokens, 6 heads, d 64, k 7): our
           FlexAttention kernel with its cached block mask, natten's flex backend, the masked SDPA kernel and global
           SDPA as the floor; forward, and forward + backward where the device has one.

CUDA: bf16 autocast, fused AdamW, `torch.compile` of the model (optional), FlexAttention neighborhood
attention with cached block masks, CUDA-event timing, `max_memory_allocated`. CPU: fp32, no compile, the
same code path, wall-clock timing and the peak-RSS growth of the process. `--quick` runs the
default-profile (CPU-scale) models at reduced sizes; its numbers are labelled `scale: default-profile`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import functools
import gc
import itertools
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hdit import io
from hdit.configs import ConfigError
from hdit.diffusion import Denoiser, cfg_denoiser, sample
from hdit.profiles import resolve
from hdit.provenance import device_slug, provenance
from hdit.step import TrainStep, autocast_args, make_optimizer

SUITES = ("train", "forward", "scaling", "sample", "na")
MODEL_LABELS = {"hdit": "HDiT", "dit": "DiT-B/4", "diffit": "DiffiT"}


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run. `scale` is the profile the models come from."""

    scale: str  # "paper" (Table 6 / Table 1 models) or "default" (the embedded CPU profile)
    base_resolution: int
    batches: tuple[int, ...]  # train and forward suites
    resolutions: tuple[int, ...]  # scaling suite
    scaling_batch: int  # batch at base_resolution in the scaling suite
    sample_batch: int
    warmup: int
    iters: int
    sample_reps: int = 1
    na_shape: tuple[int, int, int, int, int] = (64, 32, 6, 64, 7)  # batch, tokens per side, heads, head dim, kernel


PLANS = {
    # The GPU protocol: 128 px, batch 128 and 256, 128..1024 px scaling.
    "cuda": Plan("paper", 128, (128, 256), (128, 256, 512, 1024), 64, 256, warmup=10, iters=30, sample_reps=2),
    # Paper-scale models on a CPU: small batches, two resolutions (slow but the same models).
    "cpu": Plan("paper", 128, (4,), (128, 256), 4, 2, warmup=1, iters=2),
    # --quick: default-profile models (32 px native), a few iterations.
    "quick": Plan("default", 32, (8,), (32, 64, 128), 8, 4, warmup=2, iters=4, na_shape=(2, 16, 2, 32, 7)),
}


# ------------------------------------------------------------------------------------------------
# timing and memory
# ------------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_iter(fn, device: torch.device, warmup: int, iters: int, during=contextlib.nullcontext()) -> float:
    """Seconds per call of `fn` after `warmup` calls. CUDA: mean over the loop between two events, one
    sync at the end. CPU: median of per-call wall-clock times (robust to a shared, busy machine).
    `during` (e.g. PeakMemory) is entered after the warm-up, so compilation does not count."""
    for _ in range(warmup):
        fn()
    sync(device)
    with during:
        return _timed_loop(fn, device, iters)


def _timed_loop(fn, device: torch.device, iters: int) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
SMALL_MMAP, LARGE_MMAP = 128 * 1024, 32 * 1024 * 1024  # glibc's initial and (64-bit) maximum thresholds


@functools.lru_cache(maxsize=1)
def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


class PeakMemory:
    """Peak memory over a block. CUDA: `max_memory_allocated` (weights, optimiser state, activations).

    CPU (Linux, glibc): growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs)
    over the RSS at the start: the block's working memory beyond what was already resident (weights,
    optimiser state). Inside the block allocations >= 128 KiB are mmap-backed, so freed tensors leave
    RSS; this costs page faults, so on CPU the block is one extra call after the timed loop. On exit
    the mmap threshold is set to glibc's 32 MiB maximum, where its dynamic threshold settles anyway.
    """

    def __init__(self, device: torch.device):
        self.device, self.gib, self.kind, self._rss0 = device, None, None, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        gc.collect()
        libc = _glibc()
        try:
            if libc is not None:
                libc.mallopt(M_MMAP_THRESHOLD, SMALL_MMAP)
                libc.malloc_trim(0)  # hand freed heap pages back, so RSS starts at the live memory
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._rss0 = _proc_status_kib("VmRSS")
        except (OSError, AttributeError):
            self._rss0 = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.gib, self.kind = torch.cuda.max_memory_allocated(self.device) / 2 ** 30, "cuda_max_allocated"
            return False
        if (libc := _glibc()) is not None and hasattr(libc, "mallopt"):
            libc.mallopt(M_MMAP_THRESHOLD, LARGE_MMAP)
        if self._rss0 is not None and (hwm := _proc_status_kib("VmHWM")) is not None:
            self.gib, self.kind = (hwm - self._rss0) / 2 ** 20, "cpu_peak_rss_growth"
        return False


# ------------------------------------------------------------------------------------------------
# models and the steps that are timed
# ------------------------------------------------------------------------------------------------

@dataclass
class Bench:
    device: torch.device
    plan: Plan
    compile: bool
    attn_backend: str
    sample_steps: int
    base: dict  # fields shared by every record
    profile_dir: Path | None = None  # --profile: a kernel table of each train measurement's steps

    @property
    def amp(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @property
    def precision(self) -> str:
        return "bf16-autocast" if self.device.type == "cuda" else "fp32"


def build(b: Bench, config_id: str, resolution: int):
    """(run config, model at `resolution`, the model to call: compiled or not)."""
    from hdit.backbones import build_model

    run = resolve(config_id, b.plan.scale)
    run = replace(run, model=run.model.at_resolution(resolution))
    model = build_model(run.model, attn_backend=b.attn_backend).to(b.device)
    # One eager call first: FlexAttention block masks and RoPE/mask buffers are built and cached outside
    # the compiled graph, so the compiled model only reads them.
    with torch.no_grad(), b.amp:
        x, c, y = inputs(run, 1, b.device)
        model(x, c, y)
    net = torch.compile(model, dynamic=False) if b.compile else model
    return run, model, net


def inputs(run, batch: int, device):
    """A forward's arguments at sigma = 1 (HDiT, DiffiT: c_noise = 0; DiT: a mid-range timestep)."""
    m = run.model
    x = torch.randn(batch, m.in_channels, m.resolution, m.resolution, device=device)
    sigma = torch.full([batch], 1.0, device=device)
    cond = torch.log(sigma) / 4 if m.family != "dit" else torch.full([batch], 500.0, device=device)
    labels = torch.randint(0, m.num_classes + 1, [batch], device=device) if m.num_classes else None
    return x, cond, labels


def train_step_fn(b: Bench, run, model, net, batch: int):
    """The trainer's own step (`hdit.step.TrainStep`: class dropout, σ draw, loss, AdamW, EMA with warm-up) on a
    fixed synthetic batch already on the device, so the img/s measured is that of `hdit train`'s step."""
    m, dev = run.model, b.device
    ema = copy.deepcopy(model).requires_grad_(False)
    train_step = TrainStep(run, model, net, ema, make_optimizer(model, run), autocast_args(dev, run.train.precision))
    x0 = torch.rand(batch, m.in_channels, m.resolution, m.resolution, device=dev) * 2 - 1
    labels = torch.randint(0, m.num_classes, [batch], device=dev) if m.num_classes else None
    steps = itertools.count()
    model.train()

    def step():
        train_step(x0, labels, next(steps))

    return step


def forward_fn(b: Bench, run, model, net, batch: int):
    x, c, y = inputs(run, batch, b.device)
    model.eval()

    @torch.no_grad()
    def fwd():
        with b.amp:
            net(x, c, y)

    return fwd


def sample_fn(b: Bench, run, model, net, batch: int):
    denoiser, s, m, dev = Denoiser.for_run(run, net), run.sample, run.model, b.device
    labels = torch.randint(0, m.num_classes, [batch], device=dev) if m.num_classes else None
    model.eval()

    def den(x, sigma, y):
        with b.amp:
            return denoiser(x, sigma, y)

    guided = cfg_denoiser(den, labels, m.num_classes, s.cfg_scale)
    generator = torch.Generator(dev).manual_seed(0)

    def draw():
        sample(guided, (batch, m.in_channels, m.resolution, m.resolution), steps=b.sample_steps,
               sigma_min=run.train.sigma_min, sigma_max=run.train.sigma_max, rho=s.rho, eta=s.eta,
               generator=generator, device=dev)

    return draw


# ------------------------------------------------------------------------------------------------
# suites
# ------------------------------------------------------------------------------------------------

def measure(b: Bench, suite: str, make, run, model, net, batch: int, warmup: int, iters: int) -> list[dict]:
    """Time `make(...)()` and record its rate/latency and peak memory; an OOM is recorded, not fatal."""
    label = MODEL_LABELS[run.model.family] + (f" {run.id}" if run.model.family == "hdit" else "")
    rec = dict(b.base, suite=suite, config=run.id, model=label, resolution=run.model.resolution, batch=batch,
               params=sum(p.numel() for p in model.parameters()), warmup=warmup, iters=iters,
               timing="mean (CUDA events)" if b.device.type == "cuda" else "median wall-clock")
    if suite == "sample":
        rec.update(sampler=run.sample.sampler, steps=b.sample_steps, cfg_scale=run.sample.cfg_scale)
    oom = None
    try:
        fn = make(b, run, model, net, batch)
        mem = PeakMemory(b.device)
        if b.device.type == "cuda":  # peak over the timed iterations
            seconds = time_per_iter(fn, b.device, warmup, iters, during=mem)
        else:  # timed loop first, then one call under the RSS probe (see PeakMemory)
            seconds = time_per_iter(fn, b.device, warmup, iters)
            with mem:
                fn()
    except torch.OutOfMemoryError as e:
        oom = f"out of memory: {str(e).splitlines()[0]}"
    if oom is not None:  # outside the except block, so the failed step's tensors can be freed
        fn = None
        release(b.device)
        return [dict(rec, metric=m, value=None, error=oom)
                for m in ("fwd_ms" if suite in ("forward", "scaling") else f"{suite}_img_per_s", "peak_mem_gib")]
    if suite in ("forward", "scaling"):
        value, metric, unit = seconds * 1e3, "fwd_ms", "ms per batch"
    else:
        value, metric, unit = batch / seconds, f"{suite}_img_per_s", "images/s"
    out = [dict(rec, metric=metric, value=value, unit=unit)]
    if b.profile_dir is not None and suite == "train":
        path = b.profile_dir / f"profile-{suite}-{run.id}-{run.model.resolution}px-b{batch}.txt"
        profile_calls(fn, b.device, path, f"{label}, {suite} step, batch {batch}, {rec['timing']}: "
                                          f"{value:.4g} {unit}")
        out[0]["profile"] = str(path)
    if mem.gib is not None:
        out.append(dict(rec, metric="peak_mem_gib", value=mem.gib, unit="GiB", mem_kind=mem.kind))
    return out


NA_KERNELS = ("flex", "natten-flex", "masked", "global")


def na_fn(b: Bench, kernel: str, backward: bool):
    """One call of a neighborhood-attention kernel on the plan's shape (bf16 on CUDA); with `backward`, forward and
    backward. natten-flex is natten's FlexAttention backend (compiled on CUDA: `torch_compile=True`, its fast
    setting)."""
    from hdit.model.attention import global_attention, neighborhood_attention

    batch, side, heads, dim, k = b.plan.na_shape
    dtype = torch.bfloat16 if b.device.type == "cuda" else torch.float32
    q, kk, v = (torch.randn(batch, side, side, heads, dim, device=b.device, dtype=dtype, requires_grad=backward)
                for _ in range(3))
    if kernel == "global":
        call = functools.partial(global_attention, q, kk, v)
    elif kernel == "natten-flex":
        import natten

        call = functools.partial(natten.na2d, q, kk, v, k, scale=1.0, backend="flex-fna",
                                 torch_compile=b.device.type == "cuda")  # natten compiles flex on CUDA only
    else:
        call = functools.partial(neighborhood_attention, q, kk, v, k, backend=kernel)

    def fn():
        out = call()
        if backward:
            out.backward(torch.ones_like(out))
    return fn


def run_na(b: Bench, progress, emit) -> None:
    """The `na` suite. A CPU has no FlexAttention backward (ours and natten's), so there they run forward only; a
    kernel that fails (natten not installed, an unsupported shape) is recorded with its error."""
    batch, side, heads, dim, k = b.plan.na_shape
    for backward, kernel in itertools.product((False, True), NA_KERNELS):  # every forward first: the reference table
        if backward and b.device.type == "cpu" and kernel in ("flex", "natten-flex"):
            continue
        metric = "na_fwd_bwd_ms" if backward else "na_fwd_ms"
        progress(f"na {kernel} {metric}")
        rec = dict(b.base, suite="na", config=f"NA k{k}", model=kernel, resolution=side, batch=batch, heads=heads,
                   head_dim=dim, kernel_size=k, params=0, metric=metric, unit="ms per call", warmup=b.plan.warmup,
                   iters=b.plan.iters, attn_backend=kernel,
                   timing="mean (CUDA events)" if b.device.type == "cuda" else "median wall-clock")
        try:
            rec["value"] = time_per_iter(na_fn(b, kernel, backward), b.device, b.plan.warmup, b.plan.iters) * 1e3
        except (ImportError, NotImplementedError, RuntimeError, ValueError) as e:  # OOM is a RuntimeError
            rec.update(value=None, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        emit([rec])
        release(b.device)


def profile_calls(fn, device: torch.device, path: Path, title: str, calls: int = 5, rows: int = 40) -> None:
    """torch.profiler over `calls` calls of the (warm) `fn`: the operators and kernels that take the most self
    device time (CPU time on a CPU), written to `path` -- where a throughput goal is not met, this says why."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=rows, max_name_column_width=90)
    io.write_text(path, f"{title}\n{calls} calls profiled (torch.profiler)\n\n{table}\n")


def release(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def scaling_batch(plan: Plan, resolution: int) -> int:
    return max(1, plan.scaling_batch * plan.base_resolution ** 2 // resolution ** 2)


def run_suites(b: Bench, configs, suites, progress, emit) -> None:
    p = b.plan
    for cid in configs:
        if {"train", "forward", "sample"} & set(suites):
            run, model, net = build(b, cid, p.base_resolution)
            for batch in p.batches:
                if "train" in suites:
                    progress(f"train {cid} {p.base_resolution}px batch {batch}")
                    emit(measure(b, "train", train_step_fn, run, model, net, batch, p.warmup, p.iters))
                if "forward" in suites:
                    progress(f"forward {cid} {p.base_resolution}px batch {batch}")
                    emit(measure(b, "forward", forward_fn, run, model, net, batch, p.warmup, p.iters))
            if "sample" in suites:
                progress(f"sample {cid} {p.base_resolution}px batch {p.sample_batch}, {b.sample_steps} steps")
                emit(measure(b, "sample", sample_fn, run, model, net, p.sample_batch, 1, p.sample_reps))
            del run, model, net
            release(b.device)
    if "na" in suites:
        run_na(b, progress, emit)
    if "scaling" in suites:
        for r in p.resolutions:
            for cid in configs:
                progress(f"scaling {cid} {r}px batch {scaling_batch(p, r)}")
                run, model, net = build(b, cid, r)
                emit(measure(b, "scaling", forward_fn, run, model, net, scaling_batch(p, r), p.warmup, p.iters))
                del run, model, net
                release(b.device)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="reduced sizes: default-profile models at 32-128 px, small batches, few iterations")
    p.add_argument("--out", type=Path, help="output JSON (default results/bench/<device-slug>[-quick].json)")
    p.add_argument("--configs", nargs="+", default=["E", "R2"],
                   help="config IDs (default: E = HDiT-B/4 step E, R2 = DiT-B/4 in pixel space)")
    p.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off for CPU)")
    p.add_argument("--attn-backend", choices=("auto", "masked", "natten", "flex"), default=None,
                   help="HDiT neighborhood attention (default: flex on CUDA, auto = masked on CPU)")
    p.add_argument("--batches", type=int, nargs="+", help="train/forward batch sizes (overrides the plan)")
    p.add_argument("--resolutions", type=int, nargs="+", help="scaling resolutions (overrides the plan)")
    p.add_argument("--scaling-batch", type=int, help="scaling batch at the base resolution (shrinks as 1/tokens)")
    p.add_argument("--sample-batch", type=int)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's choice")
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="after each train measurement, profile 5 steps (torch.profiler) into DIR/profile-*.txt")


def make_plan(args) -> Plan:
    plan = PLANS["quick" if args.quick else args.device]
    over = {k: v for k, v in (("batches", args.batches and tuple(args.batches)),
                              ("resolutions", args.resolutions and tuple(args.resolutions)),
                              ("scaling_batch", args.scaling_batch), ("sample_batch", args.sample_batch),
                              ("warmup", args.warmup),
                              ("iters", args.iters)) if v is not None}
    plan = replace(plan, **over)
    for name in ("batches", "resolutions"):
        if any(v < 1 for v in getattr(plan, name)):
            raise ConfigError(f"--{name} {list(getattr(plan, name))}: expected positive integers")
    if plan.sample_batch < 1 or plan.scaling_batch < 1 or plan.iters < 1 or plan.warmup < 0 or args.sample_steps < 1:
        raise ConfigError(f"sample batch {plan.sample_batch}, iters {plan.iters}, warmup {plan.warmup}, sample "
                          f"steps {args.sample_steps}: expected batch/iters/steps >= 1 and warmup >= 0")
    return plan


def main(args) -> int:
    from tqdm.auto import tqdm

    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (use --device cpu, e.g. with --quick)")
        plan = make_plan(args)
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: expected >= 1")
        for cid in args.configs:  # fail before any measurement on a bad ID or resolution
            run = resolve(cid, plan.scale)
            for r in (plan.base_resolution, *plan.resolutions):
                run.model.at_resolution(r)
    except ConfigError as e:
        print(f"hdit bench: error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        torch.set_float32_matmul_precision("high")  # TF32 for what stays fp32 outside autocast
    compile_ = device.type == "cuda" if args.compile is None else args.compile
    from hdit.model.attention import resolve_backend

    backend = resolve_backend(args.attn_backend or ("flex" if device.type == "cuda" else "auto"), device)
    prov = provenance(device)
    base = dict(device=prov["device"], device_type=device.type, torch=prov["torch"], cuda=prov["cuda"],
                scale="paper" if plan.scale == "paper" else "default-profile", precision=None,
                compile=compile_, attn_backend=backend, threads=torch.get_num_threads(),
                command=prov["command"], timestamp=prov["time_utc"], hdit_repro_commit=prov["hdit_repro_commit"])
    b = Bench(device, plan, compile_, backend, args.sample_steps, base, args.profile)
    base["precision"] = b.precision
    out = args.out or Path("results/bench") / f"{device_slug(prov['device'].split(' (')[0])}" \
        f"{'-quick' if args.quick else ''}.json"
    n_jobs = (len(plan.batches) * (("train" in args.suites) + ("forward" in args.suites)) + ("sample" in args.suites)) \
        * len(args.configs) + ("scaling" in args.suites) * len(plan.resolutions) * len(args.configs) \
        + ("na" in args.suites) * (2 * len(NA_KERNELS) - 2 * (device.type == "cpu"))
    records: list[dict] = []
    bar = tqdm(total=n_jobs, desc="bench", unit="job")

    def progress(msg):
        bar.set_postfix_str(msg)

    def emit(recs):
        records.extend(recs)
        io.write_json(out, records)  # rewritten after every measurement: a crash keeps what was measured
        bar.update()
        for r in recs:
            v = "n/a" if r["value"] is None else f"{r['value']:.4g}"
            tqdm.write(f"{r['suite']:8s} {r['config']:4s} {r['resolution']:5d}px b{r['batch']:<4d} "
                       f"{r['metric']:17s} {v}")

    run_suites(b, args.configs, args.suites, progress, emit)
    bar.close()
    print(f"wrote {len(records)} records to {out}")
    return 0
