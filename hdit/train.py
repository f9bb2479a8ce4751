"""`hdit train`: train one paper row under a profile; resumable, bitwise reproducible on CPU.

    hdit train --config E --profile default --out runs/E [--steps N] [--resume] [--data PATH]
               [--device cpu|cuda] [--seed S] [--checkpoint-every K] [--grad-accum K] [--time-budget SECONDS]

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
- The same run on any hardware (issue 22): launched by torchrun (WORLD_SIZE/RANK/LOCAL_RANK, one node or
  many) it runs DDP. The batch size is global; each rank takes its contiguous slice of the global batch, split
  into --grad-accum micro-batches, and every random draw of a sample is keyed by (seed, step, global index)
  (`hdit.draws`), so 1 process, N processes on M nodes and 1 process accumulating K micro-batches train the
  same run (equal up to the order of floating-point sums; tests/test_distributed.py states the tolerance).
  --grad-accum is recorded in config.json but is not part of the run's identity (`RunConfig.training_key`).
- Elastic resume: the checkpoint holds no per-rank state (no RNG state at all: every draw is re-keyed), so a
  run checkpointed by N processes continues on M, 1 included.
- Agreed stop: SIGTERM, SIGUSR1 or SIGINT to any one rank, or --time-budget SECONDS (from this session's start)
  spent, sets a flag that the ranks all-reduce (MAX) at every step boundary, on a gloo group of their own and
  one step behind: step k's flags are reduced while step k + 1 runs and read after it, so no rank waits on
  the device and every rank stops after the same step. Rank 0 writes one checkpoint and every rank exits with
  `hdit.errors.EXIT_STOPPED` (75): "stopped at step N (reason); continue with --resume". done.json is written
  only when the run reached its step count.
- Run dir: checkpoint.pt (model, EMA, optimiser, step, data position; written atomically every
  --checkpoint-every steps and at exit), ema.pt (the EMA weights alone, for sampling; written just before each
  checkpoint), config.json, log.csv (the loss is the mean over the global batch), done.json.
- Non-finite loss: losses are read at log/checkpoint boundaries (one host sync per interval); the first
  non-finite one stops the run with an error naming its step, before the next checkpoint, so the last good
  checkpoint stays in place. Weights are checked too before each checkpoint (`rundir.check_finite_weights`):
  non-finite model or EMA weights are never saved, so that last checkpoint is also the last finite one.
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
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hdit import io, rundir
from hdit.configs import PRECISIONS, RunConfig
from hdit.data.base import to_model_input
from hdit.devices import rank_device
from hdit.errors import EXIT_STOPPED, HarnessError, error_text
from hdit.integrity import write_record
from hdit.provenance import provenance
from hdit.runlock import RunLock
from hdit.step import TrainStep, autocast_args, make_optimizer, precision_label

LOG_FIELDS = ("step", "loss", "lr", "img_per_s", "elapsed_s")
DRAWS = "keyed by (seed, step, sample)"  # checkpoint marker of the draw scheme (hdit.draws)


class TrainError(RuntimeError):
    """A run that cannot start or continue (bad run dir, diverged loss, ...)."""


class RunExistsError(TrainError):
    pass


class DivergedError(TrainError):
    pass


class Stopped(Exception):
    """The ranks agreed to stop at `step` (a signal or the time budget) and the checkpoint is written."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"stopped at step {step} ({reason}); continue with --resume")
        self.step, self.reason = step, reason


# ----------------------------------------------------------------------------- distributed

def dist_env() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's environment."""
    return (int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)))


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class _Signals:
    """SIGTERM/SIGUSR1/SIGINT set a flag (the first one received); the loop turns it into an agreed stop."""

    def __init__(self):
        self.received, self.previous = None, {}

    def __enter__(self):
        for s in STOP_SIGNALS:
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = self.received or signum

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


class _StopAgreement:
    """Every rank's stop request (a signal, the time budget) reduced with MAX over a gloo group of its own, one
    step behind: the flags of step k are all-reduced while step k + 1 runs and read after it. The host waits only
    for the other ranks' hosts to reach step k's boundary, never on the device; every rank reads the same value
    at the same boundary, so all stop after the same step. One process decides at once."""

    def __init__(self, world_size: int, signals: _Signals, budget_s: float | None, start: float):
        self.signals, self.budget_s, self.start = signals, budget_s, start
        self.group = torch.distributed.new_group(backend="gloo") if world_size > 1 else None
        self.pending = None  # (flags tensor, async work) of the previous boundary

    def local(self) -> torch.Tensor:
        spent = self.budget_s is not None and time.monotonic() - self.start >= self.budget_s
        return torch.tensor([int(self.signals.received or 0), int(spent)], dtype=torch.int64)

    def reason(self, flags: torch.Tensor) -> str | None:
        sig, spent = flags.tolist()
        if sig:
            return f"{signal.Signals(sig).name} received"
        return f"--time-budget {self.budget_s:g} s spent" if spent else None

    def poll(self) -> str | None:
        """Call at every step boundary but the last; the agreed reason to stop now, or None."""
        flags = self.local()
        if self.group is None:
            return self.reason(flags)
        previous, work = self.pending or (None, None)
        self.pending = (flags, torch.distributed.all_reduce(flags, torch.distributed.ReduceOp.MAX, self.group,
                                                            async_op=True))
        if previous is None:
            return None
        work.wait()
        return self.reason(previous)

    def close(self) -> None:
        """Complete the reduction in flight (every rank started it) before the group goes away."""
        if self.pending is not None:
            self.pending[1].wait()
            self.pending = None


# ----------------------------------------------------------------------------- checkpoint

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
    try:
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
    except OSError as e:  # a full disk names the log, not a bare errno (a cut row is dropped on resume)
        raise io.write_error(path, e) from None


# ----------------------------------------------------------------------------- training

def _setup_device(device: str | None, local_rank: int, world_size: int) -> torch.device:
    device = rank_device(device, local_rank, world_size)  # checked; torchrun: cuda:LOCAL_RANK (hdit.devices)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _load_for_resume(out: Path, run: RunConfig, profile: str) -> dict | None:
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
    return ckpt


def _check_draws(ckpt: dict, out: Path) -> None:
    """A checkpoint of the trainer before keyed draws (per-rank generators, saved per rank) cannot continue the
    same run: its noise streams have no counterpart here."""
    if ckpt.get("draws") != DRAWS:
        raise HarnessError(
            f"{out / rundir.CHECKPOINT} was written by a trainer whose random draws were per rank (before keyed "
            f"draws, issue 22, it holds {len(ckpt.get('rng', []))} per-rank RNG states); it cannot continue "
            "identically: train again in a new --out (or remove the run dir)")


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
    grad_accum: int = 1
    time_budget: float | None = None  # seconds from `started` after which the ranks agree to stop
    started: float = 0.0  # time.monotonic() at the session's start


def _train(run: RunConfig, out, profile: str = "default", *, steps: int | None = None, resume: bool = False,
           data_path=None, device: str | None = None, seed: int | None = None, checkpoint_every: int | None = None,
           log_every: int = 10, workers: int | None = None, attn_backend: str = "auto", compile: bool = False,
           progress: bool = True, grad_accum: int = 1, time_budget: float | None = None,
           precision: str | None = None) -> dict:
    started = time.monotonic()
    if precision is not None:  # before the session: the precision is part of the run's identity
        run = replace(run, train=replace(run.train, precision=precision))
    s = _session(run, out, profile, steps, seed, device, checkpoint_every, data_path)
    s = replace(s, grad_accum=_check_accum(s, grad_accum), time_budget=time_budget, started=started)
    ckpt = _check_run_dir(s, resume)
    if ckpt is not None and ckpt["step"] >= s.run.train.steps and (s.out / "done.json").exists():
        if s.rank == 0:
            rundir.restore_from_checkpoint(s.out, ckpt)  # a removed/damaged config.json or ema.pt
            print(f"{s.out}: already trained to step {ckpt['step']} (>= {s.run.train.steps}); nothing to do",
                  file=sys.stderr)
        return rundir.read_done(s.out)
    if ckpt is not None:
        _check_draws(ckpt, s.out)
        rundir.check_resume_steps(s.out, ckpt["step"], s.run.train.steps)
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
        raise HarnessError(f"batch size {run.train.batch_size} of config {run.id} is not divisible by "
                           f"WORLD_SIZE={world_size}; expected a process count that divides it")
    every = checkpoint_every or default_checkpoint_every(run.train.steps)
    return Session(run, Path(out), profile, dev, rank, world_size, every, str(data_path) if data_path else None)


def _check_accum(s: Session, k: int) -> int:
    """--grad-accum K: each rank's batch must split into K equal micro-batches."""
    batch = s.run.train.batch_size
    per_rank = batch // s.world_size
    if not isinstance(k, int) or k < 1 or per_rank % k:
        raise HarnessError(f"--grad-accum {k}: the per-rank batch {per_rank} (batch {batch} of config {s.run.id} "
                           f"over WORLD_SIZE={s.world_size}) does not split into {k} micro-batches; expected a "
                           f"divisor of {per_rank}")
    return k


def _check_run_dir(s: Session, resume: bool) -> dict | None:
    """The checkpoint to continue from (None: a fresh run); refuses an occupied dir without --resume."""
    status = run_status(s.out)
    if status and not resume:
        raise RunExistsError(f"run dir {str(s.out)!r} already holds {status}; pass --resume to continue it "
                             "or remove the directory")
    return _load_for_resume(s.out, s.run, s.profile) if resume else None


def _dataset(s: Session, workers: int | None):
    from hdit.data import build_dataset
    run, train = s.run, s.run.train
    dataset = build_dataset(run.data, s.data_path, split="train")
    if run.model.num_classes and dataset.num_classes != run.model.num_classes:
        raise TrainError(f"dataset {run.data.name!r} has {dataset.num_classes} classes; config {run.id} "
                         f"expects {run.model.num_classes}")
    if train.augment_prob > 0 and (run.model.family != "hdit" or train.objective == "ddpm"):
        raise TrainError(f"augment_prob={train.augment_prob}: non-leaking augmentation needs the HDiT model's "
                         f"augmentation conditioning (EDM objective); config {run.id} is {run.model.family}/"
                         f"{train.objective}")
    return dataset, default_workers(dataset) if workers is None else workers


def default_workers(dataset) -> int:
    """Data-loader workers: shapes renders whole batches in-process; image folders decode in up to 8 workers; a
    prepared split is a memmap read (~70k img/s per core at 128 px, results/bench/loader-cpu.json), which one
    worker overlaps with the step (more would only copy the same pages)."""
    from hdit.data.prepared import PreparedDataset
    from hdit.data.shapes import ShapesDataset

    if isinstance(dataset, ShapesDataset):
        return 0
    return 1 if isinstance(dataset, PreparedDataset) else min(8, os.cpu_count() or 1)


def _build(s: Session, attn_backend: str, compile: bool) -> TrainStep:
    """Model, EMA and optimiser (state dicts always from the unwrapped `raw` module). The initial weights come
    from the seed alone (every rank draws the same ones); the step's draws are keyed (`hdit.draws`)."""
    from hdit.backbones import build_model

    torch.manual_seed(s.run.train.seed)
    raw = build_model(s.run.model, attn_backend=attn_backend).to(s.device)
    ema = copy.deepcopy(raw).eval().requires_grad_(False)
    opt = make_optimizer(raw, s.run)
    amp = autocast_args(s.device, s.run.train.precision)
    net = _wrap(raw, s.run, s.device, s.world_size, compile, amp)
    return TrainStep(s.run, raw, net, ema, opt, amp, s.rank, s.world_size, s.grad_accum)


def _restore(state: TrainStep, ckpt: dict) -> tuple[int, float]:
    """Weights, EMA and optimiser: the same on every rank, whatever the world size that wrote them."""
    state.raw.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["ema"])
    state.opt.load_state_dict(ckpt["opt"])
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
        "training_key": s.run.training_key(), "world_size": s.world_size, "grad_accum": s.grad_accum,
        "micro_batch": train.batch_size // s.world_size // s.grad_accum, "draws": DRAWS,
        "time_budget_s": s.time_budget, "data_path": s.data_path or "",
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
    """Rank 0 writes; nothing in it is per rank (world_size records who wrote it, it binds no resume)."""
    model, ema = state.raw.state_dict(), state.ema.state_dict()
    # every rank checks (the weights are the same on all), so a refusal never leaves the others at the barrier
    rundir.check_finite_weights(s.out, step, model=model, ema=ema)
    if s.rank == 0:
        # the sampling weights first (hdit.rundir): a kill between the two writes leaves ema.pt one checkpoint
        # ahead of the resume state, never behind it
        identity = {"step": step, "config": s.run.to_dict(), "profile": s.profile}
        io.torch_save({"ema": ema, **identity}, s.out / rundir.EMA)
        io.torch_save({"model": model, "ema": ema, "opt": state.opt.state_dict(),
                       "data": stream.state_dict(), "draws": DRAWS, "world_size": s.world_size,
                       "grad_accum": s.grad_accum, "elapsed_s": elapsed, **identity}, s.out / rundir.CHECKPOINT)
    if s.world_size > 1:
        torch.distributed.barrier()


def _loop(s: Session, state: TrainStep, stream, start: tuple[int, float], log_every: int, progress: bool) -> dict:
    """Steps until the run's total; logs, checkpoints; an agreed stop checkpoints and raises `Stopped`."""
    (step, elapsed0), total, t0 = start, s.run.train.steps, time.perf_counter()
    losses = _Losses(s, step)
    pbar = tqdm(total=total, initial=step, desc=f"train {s.run.id}", disable=not progress or s.rank != 0,
                dynamic_ncols=True)
    try:
        with _Signals() as signals:
            agreement = _StopAgreement(s.world_size, signals, s.time_budget, s.started)
            state.raw.train()
            while step < total:
                x, labels = next(stream)  # uint8 NHWC, pinned on CUDA: converted to [-1, 1] NCHW on the device
                x, labels = to_model_input(x.to(s.device, non_blocking=True)), labels.to(s.device, non_blocking=True)
                losses.pending.append(state(x, labels, step))
                lr, step = state.lr(step), step + 1
                pbar.update(1)
                stop = agreement.poll() if step < total else None  # the same on every rank
                checkpoint = step % s.checkpoint_every == 0 or step == total or stop is not None
                if step % log_every == 0 or checkpoint:
                    row = losses.log_row(step, lr, elapsed0 + time.perf_counter() - t0)
                    pbar.set_postfix(loss=row["loss"], img_s=row["img_per_s"])
                if checkpoint:
                    _save_checkpoint(s, state, stream, step, elapsed0 + time.perf_counter() - t0)
                    losses.last_ckpt = step
                if stop is not None:
                    agreement.close()
                    raise Stopped(step, stop)
            agreement.close()
    finally:
        pbar.close()
    params = sum(p.numel() for p in state.raw.parameters())
    return _finish(s, start[0], step, elapsed0, time.perf_counter() - t0, params)


def _finish(s: Session, session_start: int, step: int, elapsed0: float, seconds: float, params: int) -> dict:
    done = {"step": step, "resumed_from_step": session_start, "wall_time_s": round(elapsed0 + seconds, 2),
            "seconds_per_step_this_session": round(seconds / max(1, step - session_start), 4),
            "config_id": s.run.id, "profile": s.profile, "seed": s.run.train.seed,
            "training_key": s.run.training_key(), "world_size": s.world_size, "grad_accum": s.grad_accum,
            "params": params,
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
    p.add_argument("--data", default=None, help="dataset folder (imagenet/ffhq), or its split prepared by `hdit data "
                                                "prepare`; not needed for shapes")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N (default: cuda if available; under torchrun each rank uses cuda:LOCAL_RANK)")
    p.add_argument("--seed", type=int, default=None, help="run seed (default: the config's, 0)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints (default: steps/10, at most 10000)")
    p.add_argument("--log-every", type=int, default=10, help="steps between log.csv rows")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: 0 for shapes, 1 for a prepared split, else up to 8)")
    p.add_argument("--attn-backend", default="auto",
                   help="HDiT neighborhood attention kernel: auto | masked | natten | flex (hdit.model.attention)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (inductor; on a CPU too: C++ kernels, ~1 min of compilation)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="autocast of forward + loss (default: the config's, Table 6's bf16 = bf16 on CUDA, fp32 on a "
                        "CPU; bf16-all: bf16 on a CPU too; fp32: none). Part of the run's identity")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per rank and step (the batch stays the config's; not part of the run)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop, checkpoint and exit 75 after this many seconds of this session (resume to go on)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; use 1 per job when jobs share the cores)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def main(args) -> int:
    from hdit.profiles import resolve

    for name in ("steps", "checkpoint_every", "log_every", "threads", "grad_accum"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"error: --{name.replace('_', '-')} {v}; expected a positive integer", file=sys.stderr)
            return 2
    if args.seed is not None and args.seed < 0:
        print(f"error: --seed {args.seed}; expected an integer >= 0", file=sys.stderr)
        return 2
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        print(f"error: --time-budget {args.time_budget}; expected a positive number of seconds", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rank_device(args.device, dist_env()[2], dist_env()[0])  # before the run dir is touched
        run = resolve(args.config, args.profile)
    except HarnessError as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    return train_command(run, args.out, args.profile, steps=args.steps, resume=args.resume, data_path=args.data,
                         device=args.device, seed=args.seed, checkpoint_every=args.checkpoint_every,
                         log_every=args.log_every, workers=args.workers, attn_backend=args.attn_backend,
                         compile=args.compile, progress=not args.no_progress, grad_accum=args.grad_accum,
                         time_budget=args.time_budget, precision=args.precision)


def train_command(run: RunConfig, out, profile: str, **kw) -> int:
    """`train` with the command's messages and exit codes: 0 trained, 75 stopped (resumable), 2 bad input,
    1 failed, 130 interrupted outside the training loop."""
    try:
        done = train(run, out, profile, **kw)
    except (HarnessError, RunExistsError) as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        if dist_env()[1] == 0:
            print(f"{e} in {out}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print(f"interrupted: the last checkpoint in {out} (if any) is kept; continue with --resume", file=sys.stderr)
        return 130
    if dist_env()[1] == 0:
        print(f"trained {run.id} to step {done['step']} in {done['wall_time_s']:.1f} s -> {out}")
    return 0
