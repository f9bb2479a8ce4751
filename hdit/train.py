"""`hdit train`: train one paper row under a profile; resumable, bitwise reproducible on CPU.

    hdit train --config E --profile default --out runs/E [--steps N] [--resume] [--data PATH]
               [--device cpu|cuda] [--seed S] [--checkpoint-every K]

- Objective: EDM (`hdit.diffusion`, F-space loss with the row's weighting, interpolated-cosine sigma
  density with stratified u) for every row but R1, which trains with the ADM/DiT Gaussian diffusion
  hybrid loss (`baselines.gaussian_diffusion`). DiT under EDM (R2) gets `dit_timestep(sigma)`.
- Optimiser: AdamW with the RunConfig's lr/betas/eps/weight decay on `model.param_groups`; lr constant (Table 6)
  or, per TrainConfig.lr_schedule, warmed up linearly and decayed to 0 along a half cosine (`lr_factor`).
- EMA: decay min(ema_decay, 1 - (1 + t / ema_warmup_gamma) ** -ema_warmup_power) (`hdit.ema`).
- Class dropout: labels replaced by the null class (index num_classes) with probability cond_dropout.
- Precision (TrainConfig.precision, part of the run's identity; `--precision` overrides it): "bf16" autocasts
  forward + loss to bf16 on CUDA (Table 6) and runs fp32 on a CPU; "bf16-all" casts on a CPU too; "fp32" never.
- `--compile`: torch.compile of the model (inductor; one compilation, then none per step). config.json records
  `compile` and the `precision` that ran (bf16-autocast | fp32).
- Multi-GPU: launched by torchrun (WORLD_SIZE/RANK/LOCAL_RANK) it runs DDP; the batch size is global,
  each rank takes its own slice of the data stream, seeds and stratified-u strata.
- Run dir: checkpoint.pt (model, EMA, optimiser, step, all RNG states, data position; written
  atomically every --checkpoint-every steps and at exit), ema.pt (the EMA weights alone, for sampling; written
  just before each checkpoint), config.json, log.csv, done.json.
- Non-finite loss: losses are read at log/checkpoint boundaries (one host sync per interval); the first
  non-finite one stops the run with an error naming its step, before the next checkpoint, so the last good
  checkpoint stays in place.
- Faults: one trainer per run dir (`hdit.runlock`; a second one exits naming the holder), temporaries of a
  killed write removed on start; config.json / done.json / the checkpoint are verified when read back, and the
  checkpoint's own config, seed and profile must equal config.json's (`hdit.rundir`).
"""
from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hdit import io, rundir
from hdit.configs import PRECISIONS, RunConfig
from hdit.errors import HarnessError, error_text
from hdit.integrity import write_record
from hdit.provenance import provenance
from hdit.runlock import RunLock
from hdit.step import TrainStep, autocast_args, make_optimizer, precision_label

LOG_FIELDS = ("step", "loss", "lr", "img_per_s", "elapsed_s")


class TrainError(RuntimeError):
    """A run that cannot start or continue (bad run dir, diverged loss, ...)."""


class RunExistsError(TrainError):
    pass


class DivergedError(TrainError):
    pass


# ----------------------------------------------------------------------------- distributed

def dist_env() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's environment."""
    return (int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _all_gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def rank_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- checkpoint

def rng_state(gen: torch.Generator) -> dict:
    s = {"torch": torch.get_rng_state(), "gen": gen.get_state(), "numpy": np.random.get_state(),
         "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"])
    gen.set_state(s["gen"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def default_checkpoint_every(steps: int) -> int:
    """Ten checkpoints per run (at most 10k steps apart); runs under 10 steps checkpoint only at the end (a
    paper-size checkpoint is 4x the parameters: 9.6 GB for ImageNet-256, not worth writing every step)."""
    return min(10_000, math.ceil(steps / 10)) if steps >= 10 else steps


def run_status(out: Path) -> str | None:
    """None for an empty/new dir, else a description of the run it holds."""
    if (out / "done.json").exists():
        return f"a finished run (step {rundir.read_done(out).get('step')})"
    if (out / "checkpoint.pt").exists():
        return "an unfinished run with a checkpoint"
    if (out / "config.json").exists():
        return "a run that started but wrote no checkpoint yet"
    return None


# ----------------------------------------------------------------------------- log

def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past the checkpoint we resume from (they belong to the lost segment)."""
    if not path.exists():
        return
    with open(path, newline="") as f:  # a row cut short by a killed append is dropped
        rows = [r for r in csv.DictReader(f) if None not in r.values() and str(r["step"]).isdigit()
                and int(r["step"]) <= step]
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


# ----------------------------------------------------------------------------- training

def _setup_device(device: str | None, local_rank: int, world_size: int) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda was requested but torch sees no CUDA device")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _load_for_resume(out: Path, run: RunConfig, profile: str, world_size: int) -> dict | None:
    """The checkpoint to continue from (None: start fresh); refuses mismatched or unwanted resumes."""
    has_config = (out / "config.json").exists()
    if has_config:
        stored = rundir.read_config(out)
        # through RunConfig: a record written before a field existed reads as that field's default
        old = RunConfig.from_dict(stored["config"])
        if stored["profile"] != profile or old.training_key() != run.training_key():
            longer = replace(old, train=replace(old.train, steps=run.train.steps))
            if stored["profile"] == profile and longer.training_key() == run.training_key():
                raise rundir.RunMismatchError(
                    f"run dir {str(out)!r} was trained for {old.train.steps} steps under a "
                    f"{run.train.lr_schedule!r} lr schedule, which decays over the step count; a run of "
                    f"{run.train.steps} steps is another run: use a new --out")
            raise rundir.RunMismatchError(
                f"run dir {str(out)!r} was started with config {stored['config'].get('id')!r}, profile "
                f"{stored['profile']!r} and different settings; resume with the same --config/--profile/--seed or "
                "use a new --out")
    if not (out / "checkpoint.pt").exists():
        return None
    ckpt = rundir.load_checkpoint(out)
    rundir.check_checkpoint(ckpt, run.to_dict(), profile, out, "config.json" if has_config else "the command line")
    if ckpt["world_size"] != world_size:
        raise TrainError(f"checkpoint was written with WORLD_SIZE={ckpt['world_size']}; resuming with "
                         f"{world_size} would change the data and noise streams")
    return ckpt


class _Signals:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and stops."""

    def __init__(self):
        self.received, self.previous = None, {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


def train(run: RunConfig, out, profile: str = "default", **kw) -> dict:
    """Train `run` into the run dir `out`; returns the done.json record. See the module docstring and `_train`
    for the keyword arguments. Rank 0 holds the run dir's lock for the whole run."""
    with RunLock(out, "hdit train", enabled=dist_env()[1] == 0) as lock:
        if lock.enabled:
            io.remove_stale_temporaries(out)
        return _train(run, out, profile, **kw)


@dataclass
class Session:
    """What one training session works with: the run (steps and seed applied), where and how it runs."""

    run: RunConfig
    out: Path
    profile: str
    device: torch.device
    rank: int
    world_size: int
    checkpoint_every: int
    data_path: str | None = None


def _train(run: RunConfig, out, profile: str = "default", *, steps: int | None = None, resume: bool = False,
           data_path=None, device: str | None = None, seed: int | None = None, checkpoint_every: int | None = None,
           log_every: int = 10, workers: int | None = None, attn_backend: str = "auto", compile: bool = False,
           progress: bool = True, precision: str | None = None) -> dict:
    if precision is not None:  # before the session: the precision is part of the run's identity
        run = replace(run, train=replace(run.train, precision=precision))
    s = _session(run, out, profile, steps, seed, device, checkpoint_every, data_path)
    ckpt = _check_run_dir(s, resume)
    if ckpt is not None and ckpt["step"] >= s.run.train.steps and (s.out / "done.json").exists():
        if s.rank == 0:
            print(f"{s.out}: already trained to step {ckpt['step']} (>= {s.run.train.steps}); nothing to do",
                  file=sys.stderr)
        return rundir.read_done(s.out)
    dataset, workers = _dataset(s, workers)
    state = _build(s, attn_backend, compile)
    start = _restore(state, ckpt) if ckpt is not None else (0, 0.0)
    stream = _stream(s, dataset, workers, start[0], ckpt)
    del ckpt
    _write_config(s, state, attn_backend, compile, start[0])
    return _loop(s, state, stream, start, log_every, progress)


def _session(run, out, profile, steps, seed, device, checkpoint_every, data_path) -> Session:
    world_size, rank, local_rank = dist_env()
    dev = _setup_device(device, local_rank, world_size)
    seed = run.train.seed if seed is None else seed
    run = replace(run, train=replace(run.train, steps=steps or run.train.steps, seed=seed))
    if run.train.batch_size % world_size:
        raise TrainError(f"batch size {run.train.batch_size} is not divisible by WORLD_SIZE={world_size}")
    every = checkpoint_every or default_checkpoint_every(run.train.steps)
    return Session(run, Path(out), profile, dev, rank, world_size, every, str(data_path) if data_path else None)


def _check_run_dir(s: Session, resume: bool) -> dict | None:
    """The checkpoint to continue from (None: a fresh run); refuses an occupied dir without --resume."""
    status = run_status(s.out)
    if status and not resume:
        raise RunExistsError(f"run dir {str(s.out)!r} already holds {status}; pass --resume to continue it "
                             "or remove the directory")
    return _load_for_resume(s.out, s.run, s.profile, s.world_size) if resume else None


def _dataset(s: Session, workers: int | None):
    from hdit.data import build_dataset
    from hdit.data.shapes import ShapesDataset

    run, train = s.run, s.run.train
    dataset = build_dataset(run.data, s.data_path, split="train")
    if run.model.num_classes and dataset.num_classes != run.model.num_classes:
        raise TrainError(f"dataset {run.data.name!r} has {dataset.num_classes} classes; config {run.id} "
                         f"expects {run.model.num_classes}")
    if train.augment_prob > 0 and (run.model.family != "hdit" or train.objective == "ddpm"):
        raise TrainError(f"augment_prob={train.augment_prob}: non-leaking augmentation needs the HDiT model's "
                         f"augmentation conditioning (EDM objective); config {run.id} is {run.model.family}/"
                         f"{train.objective}")
    if workers is None:  # shapes renders whole batches in-process; image folders decode in workers
        workers = 0 if isinstance(dataset, ShapesDataset) else min(8, os.cpu_count() or 1)
    return dataset, workers


def _build(s: Session, attn_backend: str, compile: bool) -> TrainStep:
    """Model, EMA, optimiser and generator (state dicts always from the unwrapped `raw` module)."""
    from hdit.backbones import build_model

    seed = s.run.train.seed
    torch.manual_seed(seed)
    raw = build_model(s.run.model, attn_backend=attn_backend).to(s.device)
    ema = copy.deepcopy(raw).eval().requires_grad_(False)
    opt = make_optimizer(raw, s.run)
    gen = torch.Generator(s.device).manual_seed(rank_seed(seed, s.rank))
    torch.manual_seed(rank_seed(seed + 1, s.rank))  # dropout etc. draw from the global RNG
    amp = autocast_args(s.device, s.run.train.precision)
    net = _wrap(raw, s.run, s.device, s.world_size, compile, amp)
    return TrainStep(s.run, raw, net, ema, opt, gen, amp, s.rank, s.world_size)


def _restore(state: TrainStep, ckpt: dict) -> tuple[int, float]:
    state.raw.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["ema"])
    state.opt.load_state_dict(ckpt["opt"])
    set_rng_state(ckpt["rng"][state.rank], state.gen)
    return ckpt["step"], ckpt["elapsed_s"]


def _stream(s: Session, dataset, workers: int, step: int, ckpt: dict | None):
    from hdit.data import BatchStream

    train = s.run.train
    stream = BatchStream(dataset, train.batch_size // s.world_size, train.seed, s.rank, s.world_size, start_step=step,
                         num_workers=workers)
    if ckpt is not None:
        stream.load_state_dict(ckpt["data"])
    return stream


def _write_config(s: Session, state: TrainStep, attn_backend: str, compile: bool, step: int) -> None:
    if s.rank != 0:
        return
    train = s.run.train
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "done.json").unlink(missing_ok=True)
    write_record(s.out / "config.json", {
        "config": s.run.to_dict(), "config_id": s.run.id, "profile": s.profile, "seed": train.seed,
        "training_key": s.run.training_key(), "world_size": s.world_size, "data_path": s.data_path or "",
        "checkpoint_every": s.checkpoint_every, "objective": state.objective.description,
        "ema": f"min({train.ema_decay}, 1 - (1 + t / {train.ema_warmup_gamma}) ** -{train.ema_warmup_power})",
        "attn_backend": attn_backend, "compile": compile, "precision": precision_label(state.amp),
        "provenance": provenance(s.device)})
    _truncate_log(s.out / "log.csv", step)


class _Losses:
    """Per-step losses kept on the device and read at log/checkpoint boundaries (one host sync per interval);
    the first non-finite one stops the run before the next checkpoint, so the last good one stays."""

    def __init__(self, s: Session, step: int):
        self.s, self.pending, self.window_start, self.last_ckpt = s, [], step, step
        self.window_t = time.perf_counter()

    def flush(self) -> list[float]:
        if not self.pending:
            return []
        values = torch.stack(self.pending)
        if self.s.world_size > 1:
            torch.distributed.all_reduce(values)
            values /= self.s.world_size
        values = values.tolist()
        self.pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                path = self.s.out / "checkpoint.pt"
                where = (f"the last good checkpoint (step {self.last_ckpt}) is kept in {path}" if self.last_ckpt
                         else "no checkpoint was written yet")
                raise DivergedError(f"loss is {v} at step {self.window_start + i + 1}; stopping: {where}")
        return values

    def log_row(self, step: int, lr: float, elapsed: float) -> dict:
        values, now = self.flush(), time.perf_counter()
        row = {"step": step, "loss": f"{sum(values) / len(values):.6g}", "lr": f"{lr:.6g}",
               "img_per_s": f"{len(values) * self.s.run.train.batch_size / (now - self.window_t):.4g}",
               "elapsed_s": f"{elapsed:.2f}"}
        if self.s.rank == 0:
            _append_log(self.s.out / "log.csv", row)
        self.window_start, self.window_t = step, now
        return row


def _save_checkpoint(s: Session, state: TrainStep, stream, step: int, elapsed: float) -> None:
    rngs = _all_gather(rng_state(state.gen), s.world_size)
    if s.rank == 0:
        # the sampling weights first (hdit.rundir): a kill between the two writes leaves ema.pt one checkpoint
        # ahead of the resume state, never behind it
        ema = state.ema.state_dict()
        identity = {"step": step, "config": s.run.to_dict(), "profile": s.profile}
        io.torch_save({"ema": ema, **identity}, s.out / rundir.EMA)
        io.torch_save({"model": state.raw.state_dict(), "ema": ema, "opt": state.opt.state_dict(), "rng": rngs,
                       "data": stream.state_dict(), "world_size": s.world_size, "elapsed_s": elapsed, **identity},
                      s.out / rundir.CHECKPOINT)
    if s.world_size > 1:
        torch.distributed.barrier()


def _loop(s: Session, state: TrainStep, stream, start: tuple[int, float], log_every: int, progress: bool) -> dict:
    """Steps until the run's total; logs, checkpoints, stops cleanly on SIGTERM/SIGINT."""
    (step, elapsed0), total, t0 = start, s.run.train.steps, time.perf_counter()
    losses = _Losses(s, step)
    pbar = tqdm(total=total, initial=step, desc=f"train {s.run.id}", disable=not progress or s.rank != 0,
                dynamic_ncols=True)
    try:
        with _Signals() as signals:
            state.raw.train()
            while step < total:
                x, labels = next(stream)
                x, labels = x.to(s.device, non_blocking=True), labels.to(s.device, non_blocking=True)
                losses.pending.append(state(x, labels, step))
                lr, step = state.lr(step), step + 1
                pbar.update(1)
                checkpoint = step % s.checkpoint_every == 0 or step == total or signals.received is not None
                if step % log_every == 0 or checkpoint:
                    row = losses.log_row(step, lr, elapsed0 + time.perf_counter() - t0)
                    pbar.set_postfix(loss=row["loss"], img_s=row["img_per_s"])
                if checkpoint:
                    _save_checkpoint(s, state, stream, step, elapsed0 + time.perf_counter() - t0)
                    losses.last_ckpt = step
                if signals.received is not None:
                    raise KeyboardInterrupt
    finally:
        pbar.close()
    params = sum(p.numel() for p in state.raw.parameters())
    return _finish(s, start[0], step, elapsed0, time.perf_counter() - t0, params)


def _finish(s: Session, session_start: int, step: int, elapsed0: float, seconds: float, params: int) -> dict:
    done = {"step": step, "resumed_from_step": session_start, "wall_time_s": round(elapsed0 + seconds, 2),
            "seconds_per_step_this_session": round(seconds / max(1, step - session_start), 4),
            "config_id": s.run.id, "profile": s.profile, "seed": s.run.train.seed,
            "training_key": s.run.training_key(), "world_size": s.world_size, "params": params,
            "provenance": provenance(s.device)}
    if s.rank == 0:
        write_record(s.out / "done.json", done)
    return done


def _wrap(raw, run: RunConfig, device, world_size: int, compile: bool, amp: dict):
    """DDP and/or torch.compile around the model. Before compiling, one eager forward builds the attention masks
    (and FlexAttention block masks) outside the graph, which then only reads them; it runs in eval mode, so no
    dropout draws from the global RNG and a compiled run's stream stays the eager run's."""
    model = raw
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        m, training = run.model, raw.training
        x = torch.zeros(1, m.in_channels, run.data.resolution, run.data.resolution, device=device)
        labels = torch.zeros(1, dtype=torch.long, device=device) if m.num_classes else None
        with torch.no_grad(), torch.autocast(**amp):
            raw.eval()(x, torch.zeros(1, device=device), labels)
        raw.train(training)
        model = torch.compile(model, dynamic=False)
    return model


# ----------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config ID (paper row), e.g. E, R1")
    p.add_argument("--profile", default="default", help="paper | default (see hdit.profiles)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, default=None, help="total training steps (default: the profile's)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--data", default=None, help="dataset folder (imagenet/ffhq); not needed for shapes")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=None, help="run seed (default: the config's, 0)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints (default: steps/10, at most 10000)")
    p.add_argument("--log-every", type=int, default=10, help="steps between log.csv rows")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: 0 for shapes)")
    p.add_argument("--attn-backend", default="auto",
                   help="HDiT neighborhood attention kernel: auto | masked | natten | flex (hdit.model.attention)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (inductor; on a CPU too: C++ kernels, ~1 min of compilation)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="autocast of forward + loss (default: the config's, Table 6's bf16 = bf16 on CUDA, fp32 on a "
                        "CPU; bf16-all: bf16 on a CPU too; fp32: none). Part of the run's identity")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; use 1 per job when jobs share the cores)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def main(args) -> int:
    from hdit.profiles import resolve

    for name in ("steps", "checkpoint_every", "log_every", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"error: --{name.replace('_', '-')} {v}; expected a positive integer", file=sys.stderr)
            return 2
    if args.seed is not None and args.seed < 0:
        print(f"error: --seed {args.seed}; expected an integer >= 0", file=sys.stderr)
        return 2
    if args.device not in (None, "cpu", "cuda") and not str(args.device).startswith("cuda:"):
        print(f"error: --device {args.device!r}; expected cpu or cuda", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run = resolve(args.config, args.profile)
        done = train(run, args.out, args.profile, steps=args.steps, resume=args.resume, data_path=args.data,
                     device=args.device, seed=args.seed, checkpoint_every=args.checkpoint_every,
                     log_every=args.log_every, workers=args.workers, attn_backend=args.attn_backend,
                     compile=args.compile, progress=not args.no_progress, precision=args.precision)
    except (HarnessError, RunExistsError) as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: checkpoint saved in {args.out}; continue with --resume", file=sys.stderr)
        return 130
    print(f"trained {args.config} to step {done['step']} in {done['wall_time_s']:.1f} s -> {args.out}")
    return 0
