"""`hdit train`: train one paper row under a profile; resumable, bitwise reproducible on CPU.

    hdit train --config E --profile default --out runs/E [--steps N] [--resume] [--data PATH]
               [--device cpu|cuda] [--seed S] [--checkpoint-every K]

- Objective: EDM (`hdit.diffusion`, F-space loss with the row's weighting, interpolated-cosine sigma
  density with stratified u) for every row but R1, which trains with the ADM/DiT Gaussian diffusion
  hybrid loss (`baselines.gaussian_diffusion`). DiT under EDM (R2) gets `dit_timestep(sigma)`.
- Optimiser: AdamW with the RunConfig's lr/betas/eps/weight decay on `model.param_groups`, constant lr.
- EMA: decay min(ema_decay, 1 - (1 + t / ema_warmup_gamma) ** -ema_warmup_power) (`hdit.ema`).
- Class dropout: labels replaced by the null class (index num_classes) with probability cond_dropout.
- bf16 autocast on CUDA (TrainConfig.precision); CPU runs fp32 through the same autocast call.
- Multi-GPU: launched by torchrun (WORLD_SIZE/RANK/LOCAL_RANK) it runs DDP; the batch size is global,
  each rank takes its own slice of the data stream, seeds and stratified-u strata.
- Run dir: checkpoint.pt (model, EMA, optimiser, step, all RNG states, data position; written
  atomically every --checkpoint-every steps and at exit), config.json, log.csv, done.json.
- Non-finite loss: losses are read at log/checkpoint boundaries (one host sync per interval); the first
  non-finite one stops the run with an error naming its step, before the next checkpoint, so the last good
  checkpoint stays in place.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hdit import io
from hdit.configs import ConfigError, RunConfig
from hdit.data.augment import non_leaky_augment
from hdit.diffusion import Denoiser, sample_sigma
from hdit.ema import ema_decay, ema_update
from hdit.provenance import provenance

LOG_FIELDS = ("step", "loss", "lr", "img_per_s", "elapsed_s")


class TrainError(RuntimeError):
    """A run that cannot start or continue (bad run dir, diverged loss, ...)."""


class RunExistsError(TrainError):
    pass


class DivergedError(TrainError):
    pass


# ----------------------------------------------------------------------------- objective

class Objective:
    """The per-sample training loss of a row: EDM (HDiT trainer) or Gaussian diffusion (R1)."""

    def __init__(self, run: RunConfig, model: torch.nn.Module, rank: int = 0, world_size: int = 1):
        self.run, self.t, self.rank, self.world_size = run, run.train, rank, world_size
        if self.t.objective == "ddpm":
            from baselines.gaussian_diffusion import GaussianDiffusion

            device = next(model.parameters()).device
            self.diffusion = GaussianDiffusion.ddpm(1000, learn_sigma=run.model.learn_sigma).to(device)
        else:
            self.denoiser = Denoiser.for_run(run, model)
        self.model = model

    def __call__(self, x: torch.Tensor, labels, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        aug_cond = None
        if self.t.augment_prob > 0:  # non-leaking augmentation (FFHQ-1024, Table 6): the model sees its vector
            x, aug_cond = non_leaky_augment(x, self.t.augment_prob, gen)
        noise = torch.randn(x.shape, generator=gen, device=x.device)
        if self.t.objective == "ddpm":
            t = torch.randint(0, self.diffusion.num_steps, (n,), generator=gen, device=x.device)
            return self.diffusion.training_losses(self.model, x, t, noise, labels)["loss"]
        sigma = sample_sigma(n, self.run.data.resolution, gen, self.rank, self.world_size, self.t.sigma_min,
                             self.t.sigma_max, self.t.sigma_data, device=x.device)
        return self.denoiser.loss(x, noise, sigma, labels, self.t.weighting, self.t.gamma, aug_cond)


def drop_labels(labels: torch.Tensor, num_classes: int, p: float, gen: torch.Generator):
    """Class dropout to the null class (index num_classes); None for unconditional models."""
    if num_classes == 0:
        return None
    drop = torch.rand(labels.shape, generator=gen, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


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
        return f"a finished run (step {json.loads((out / 'done.json').read_text()).get('step')})"
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
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
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

def _comparable(d: dict) -> dict:
    """A RunConfig dict as stored in JSON, without the (extendable) step count."""
    return {**d, "train": {k: v for k, v in d["train"].items() if k != "steps"}}


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
    if (out / "config.json").exists():
        stored = json.loads((out / "config.json").read_text())
        if stored["profile"] != profile or _comparable(stored["config"]) != _comparable(run.to_dict()):
            raise TrainError(f"run dir {str(out)!r} was started with config {stored['config']['id']!r}, profile "
                             f"{stored['profile']!r} and different settings; resume with the same --config/--profile/"
                             "--seed or use a new --out")
    if not (out / "checkpoint.pt").exists():
        return None
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
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


def train(run: RunConfig, out, profile: str = "default", *, steps: int | None = None, resume: bool = False,
          data_path=None, device: str | None = None, seed: int | None = None, checkpoint_every: int | None = None,
          log_every: int = 10, workers: int | None = None, attn_backend: str = "auto", compile: bool = False,
          progress: bool = True) -> dict:
    """Train `run` into the run dir `out`; returns the done.json record. See the module docstring."""
    out = Path(out)
    world_size, rank, local_rank = dist_env()
    device = _setup_device(device, local_rank, world_size)
    seed = run.train.seed if seed is None else seed
    run = replace(run, train=replace(run.train, steps=steps or run.train.steps, seed=seed))
    total, t = run.train.steps, run.train
    if t.batch_size % world_size:
        raise TrainError(f"batch size {t.batch_size} is not divisible by WORLD_SIZE={world_size}")
    checkpoint_every = checkpoint_every or default_checkpoint_every(total)

    status = run_status(out)
    if status and not resume:
        raise RunExistsError(f"run dir {str(out)!r} already holds {status}; pass --resume to continue it "
                             "or remove the directory")
    ckpt = _load_for_resume(out, run, profile, world_size) if resume else None
    if ckpt is not None and ckpt["step"] >= total and (out / "done.json").exists():
        if rank == 0:
            print(f"{out}: already trained to step {ckpt['step']} (>= {total}); nothing to do", file=sys.stderr)
        return json.loads((out / "done.json").read_text())

    # ---- data
    from hdit.data import BatchStream, build_dataset
    from hdit.data.shapes import ShapesDataset

    dataset = build_dataset(run.data, data_path, split="train")
    if run.model.num_classes and dataset.num_classes != run.model.num_classes:
        raise TrainError(f"dataset {run.data.name!r} has {dataset.num_classes} classes; config {run.id} "
                         f"expects {run.model.num_classes}")
    if t.augment_prob > 0 and (run.model.family != "hdit" or t.objective == "ddpm"):
        raise TrainError(f"augment_prob={t.augment_prob}: non-leaking augmentation needs the HDiT model's "
                         f"augmentation conditioning (EDM objective); config {run.id} is {run.model.family}/"
                         f"{t.objective}")
    if workers is None:  # shapes renders whole batches in-process; image folders decode in workers
        workers = 0 if isinstance(dataset, ShapesDataset) else min(8, os.cpu_count() or 1)

    # ---- model, EMA, optimiser (state dicts always from the unwrapped `raw` module)
    from hdit.model import build_model

    torch.manual_seed(seed)
    raw = build_model(run.model, attn_backend=attn_backend).to(device)
    ema = copy.deepcopy(raw).eval().requires_grad_(False)
    opt = torch.optim.AdamW(raw.param_groups(t.lr, t.weight_decay), lr=t.lr, betas=tuple(t.betas), eps=t.eps,
                            weight_decay=t.weight_decay, fused=True)  # fused: ~6x less CPU time than the per-tensor loop
    step, elapsed = 0, 0.0
    gen = torch.Generator(device).manual_seed(rank_seed(seed, rank))
    torch.manual_seed(rank_seed(seed + 1, rank))  # dropout etc. draw from the global RNG
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed = ckpt["step"], ckpt["elapsed_s"]
        set_rng_state(ckpt["rng"][rank], gen)
    stream = BatchStream(dataset, t.batch_size // world_size, seed, rank, world_size, start_step=step,
                         num_workers=workers)
    if ckpt is not None:
        stream.load_state_dict(ckpt["data"])
    del ckpt
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and t.precision == "bf16")
    model = _wrap(raw, run, device, world_size, compile, amp)
    objective = Objective(run, model, rank, world_size)

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "done.json").unlink(missing_ok=True)
        io.write_json(out / "config.json", {
            "config": run.to_dict(), "config_id": run.id, "profile": profile, "seed": seed,
            "world_size": world_size, "data_path": str(data_path or ""), "checkpoint_every": checkpoint_every,
            "objective": "ddpm" if t.objective == "ddpm" else f"edm ({objective.denoiser.noise_cond})",
            "ema": f"min({t.ema_decay}, 1 - (1 + t / {t.ema_warmup_gamma}) ** -{t.ema_warmup_power})",
            "attn_backend": attn_backend, "compile": compile, "provenance": provenance(device)})
        _truncate_log(out / "log.csv", step)

    t0 = time.perf_counter()

    def save_checkpoint():
        rngs = _all_gather(rng_state(gen), world_size)
        if rank == 0:
            io.torch_save({"model": raw.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                           "step": step, "rng": rngs, "data": stream.state_dict(), "world_size": world_size,
                           "elapsed_s": elapsed + time.perf_counter() - t0, "config": run.to_dict(),
                           "profile": profile}, ckpt_path)
        if world_size > 1:
            torch.distributed.barrier()

    ckpt_path = out / "checkpoint.pt"
    session_start, last_ckpt, window_start = step, step, step
    pending: list[torch.Tensor] = []  # per-step losses on the device, read at log/checkpoint boundaries
    win_t = time.perf_counter()

    def flush() -> list[float]:
        """Read the pending losses (one host sync); the first non-finite one stops the run."""
        if not pending:
            return []
        values = torch.stack(pending)
        if world_size > 1:
            torch.distributed.all_reduce(values)
            values /= world_size
        values = values.tolist()
        pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                where = (f"the last good checkpoint (step {last_ckpt}) is kept in {ckpt_path}" if last_ckpt
                         else "no checkpoint was written yet")
                raise DivergedError(f"loss is {v} at step {window_start + i + 1}; stopping: {where}")
        return values

    pbar = tqdm(total=total, initial=step, desc=f"train {run.id}", disable=not progress or rank != 0,
                dynamic_ncols=True)
    try:
        with _Signals() as signals:
            raw.train()
            while step < total:
                x, labels = next(stream)
                x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                labels = drop_labels(labels, run.model.num_classes, t.cond_dropout, gen)
                with torch.autocast(**amp):
                    loss = objective(x, labels, gen).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                ema_update(ema, raw, ema_decay(step, t.ema_decay, t.ema_warmup_power, t.ema_warmup_gamma))
                pending.append(loss.detach())
                step += 1
                pbar.update(1)
                checkpoint = step % checkpoint_every == 0 or step == total or signals.received is not None
                if step % log_every == 0 or checkpoint:
                    values = flush()
                    now = time.perf_counter()
                    row = {"step": step, "loss": f"{sum(values) / len(values):.6g}", "lr": t.lr,
                           "img_per_s": f"{len(values) * t.batch_size / (now - win_t):.4g}",
                           "elapsed_s": f"{elapsed + now - t0:.2f}"}
                    if rank == 0:
                        _append_log(out / "log.csv", row)
                    pbar.set_postfix(loss=row["loss"], img_s=row["img_per_s"])
                    window_start, win_t = step, now
                if checkpoint:
                    save_checkpoint()
                    last_ckpt = step
                if signals.received is not None:
                    raise KeyboardInterrupt
    finally:
        pbar.close()

    now = time.perf_counter()
    done = {"step": step, "resumed_from_step": session_start, "wall_time_s": round(elapsed + now - t0, 2),
            "seconds_per_step_this_session": round((now - t0) / max(1, step - session_start), 4),
            "config_id": run.id, "profile": profile, "seed": seed, "world_size": world_size,
            "provenance": provenance(device)}
    if rank == 0:
        io.write_json(out / "done.json", done)
    return done


def _wrap(raw, run: RunConfig, device, world_size: int, compile: bool, amp: dict):
    """DDP and/or torch.compile around the model; one eager forward first caches attention masks."""
    model = raw
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        m = run.model
        x = torch.zeros(1, m.in_channels, run.data.resolution, run.data.resolution, device=device)
        labels = torch.zeros(1, dtype=torch.long, device=device) if m.num_classes else None
        with torch.no_grad(), torch.autocast(**amp):
            raw(x, torch.zeros(1, device=device), labels)
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
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; use 1 per job when jobs share the cores)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def main(args) -> int:
    from hdit.data import DataError
    from hdit.profiles import resolve

    for name in ("steps", "checkpoint_every", "log_every", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"error: --{name.replace('_', '-')} {v}; expected a positive integer", file=sys.stderr)
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
                     compile=args.compile, progress=not args.no_progress)
    except (ConfigError, DataError, RunExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: checkpoint saved in {args.out}; continue with --resume", file=sys.stderr)
        return 130
    print(f"trained {args.config} to step {done['step']} in {done['wall_time_s']:.1f} s -> {args.out}")
    return 0
