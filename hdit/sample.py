"""`hdit sample`: draw images from a trained run's EMA weights into resumable .npz shards.

    hdit sample --run RUN --n 500 --out DIR [--steps S] [--cfg-scale W] [--seed S] [--batch-size B] [--device D]
                [--compile]

- Sampler and steps default to the run's SampleConfig: DPM++(3M) SDE (eta 1, Karras rho 7, sigma range of
  the TrainConfig) for EDM runs, DDPM ancestral sampling respaced to `steps` for R1.
- CFG: D = D_u + w (D_c - D_u) (DDPM: on eps), w = 1 is no guidance (one model pass).
- Shard k holds samples [k * B, (k + 1) * B): its class labels (uniform over the classes; unconditional
  models draw none and store -1) and all its noise come from a generator seeded with (seed, k), so the output
  is the same wherever a killed job resumed. Each shard is one batch, written atomically as
  `shard-%05d.npz` (uint8 NHWC `images`, int64 `labels`); existing shards are skipped.
- Precision: the run's TrainConfig.precision (bf16 autocast on CUDA for Table 6's "bf16"). `--compile`:
  torch.compile of the model (one compilation per batch shape: full shards, the last one, CFG's doubled batch).
  meta.json records `precision` (bf16-autocast | fp32) and `compile`.
- meta.json (written last: it marks a complete set) records the run, config, profile, n, seed, sampler,
  steps, cfg_scale, batch size, the weights (checkpoint step, file and sha256), provenance and every shard
  (name, count, checksum: `hdit.integrity.write_set_record`; readers take exactly those shards or refuse the
  set). While shards are being written the same settings sit in `.sampling.json`; resuming with different
  settings is refused. Every shard stores the step and sha256 of the weights that drew it: shards of weights the
  run has since replaced (an extended run) are moved aside, unchanged, into a hidden `.superseded-step<S>/`
  (with a warning) and the set is drawn afresh: never relabelled, never deleted.
- Faults: the request (n, steps, cfg scale, seed, batch size) is checked before any model is built; the run's
  config.json and checkpoint are verified (`hdit.rundir`) and must describe the same run; one process writes
  OUT at a time (`hdit.runlock`), removing a killed one's temporaries. Every batch is checked: a non-finite
  value, or a network output / sample beyond `DIVERGED_LIMIT` (the network's targets, EDM's F and DDPM's eps,
  have unit variance; the data lie in [-1, 1]), stops the job with an error naming the run, its checkpoint
  step and the shard, and nothing is written for that shard.
"""
from __future__ import annotations

import argparse
import math
import numbers
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hdit import io, rundir
from hdit.configs import ConfigError, RunConfig
from hdit.devices import resolve_device
from hdit.errors import HarnessError, error_text
from hdit.integrity import NPZ_ERRORS, damaged, read_record, write_record, write_set_record
from hdit.provenance import provenance
from hdit.step import autocast_args, precision_label
from hdit.runlock import RunLock

DIVERGED_LIMIT = 1e3  # |network output| or |sample| beyond this: diverged weights (see the module docstring)
DDPM_STEPS = 1000  # R1's diffusion length: at most this many respaced sampling steps


class SampleError(HarnessError):
    """Bad sampling request (missing run, mismatched resume, ...)."""


class DivergedSamplesError(SampleError):
    """A batch with non-finite or diverged values: nothing is written for it."""


def read_run(run_dir) -> tuple[RunConfig, dict]:
    """(RunConfig, config.json record) of a trained run directory, checked; builds no model."""
    run_dir = Path(run_dir)
    if rundir.sampling_weights(run_dir) is None:
        raise SampleError(f"{str(run_dir)!r} is not a trained run (needs config.json and ema.pt; "
                          "run `hdit train` first)")
    if not (run_dir / rundir.CONFIG).is_file():
        raise SampleError(f"{run_dir / rundir.CONFIG} is missing beside the run's weights; "
                          + rundir.config_fix(run_dir).replace("remove the damaged file and ", ""))
    record = rundir.read_config(run_dir)
    try:
        return RunConfig.from_dict(record["config"]), record
    except (KeyError, TypeError, ConfigError) as e:
        raise damaged(run_dir / rundir.CONFIG, f"its config is not a valid RunConfig ({e})",
                      rundir.config_fix(run_dir)) from None


def load_run(run_dir, device="cpu") -> tuple[RunConfig, dict, torch.nn.Module]:
    """(RunConfig, config.json record, EMA model in eval mode) of a run directory; the checkpoint is verified
    and must hold the run config.json describes."""
    from hdit.backbones import build_model

    run, record = read_run(run_dir)
    weights, ckpt, digest = rundir.load_sampling_weights(run_dir, mmap=True)
    rundir.check_checkpoint(ckpt, record["config"], record["profile"], run_dir, file=weights)
    model = build_model(run.model)
    model.load_state_dict(ckpt["ema"])
    record.update(checkpoint_step=int(ckpt["step"]), weights_file=weights, weights_sha256=digest)
    return run, record, model.to(device).eval().requires_grad_(False)


def shard_generator(seed: int, shard: int, device) -> torch.Generator:
    state = np.random.SeedSequence([seed, shard]).generate_state(1, np.uint64)[0] >> 1
    return torch.Generator(device).manual_seed(int(state))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> uint8 NHWC (round to nearest, like the data pipeline's / 127.5 - 1)."""
    return (x.float() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sample_batch(run: RunConfig, model, n: int, steps: int, cfg_scale: float, generator: torch.Generator,
                 device, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples (float, nominally [-1, 1], not clamped: `check_batch` looks at the raw values) and their labels;
    labels first, then all noise, from `generator`."""
    m, train = run.model, run.train
    labels = torch.randint(0, m.num_classes, (n,), generator=generator, device=device) if m.num_classes else None
    shape = (n, m.in_channels, run.data.resolution, run.data.resolution)
    with torch.no_grad(), torch.autocast(**autocast_args(torch.device(device), train.precision)):
        if run.sample.sampler == "ddpm":
            from baselines.gaussian_diffusion import GaussianDiffusion

            diffusion = GaussianDiffusion.ddpm(1000, respace=steps, learn_sigma=m.learn_sigma).to(device)

            def model_fn(x, t_model):
                if labels is None or cfg_scale == 1.0:
                    return model(x, t_model, labels).float()
                null = torch.full_like(labels, m.num_classes)
                out = model(torch.cat([x, x]), torch.cat([t_model, t_model]), torch.cat([labels, null])).float()
                cond, uncond = out.chunk(2)
                c = m.in_channels  # guidance on eps; the variance channels come from the conditional pass
                eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
                return torch.cat([eps, cond[:, c:]], dim=1)

            x = diffusion.p_sample_loop(model_fn, shape, generator, device, clip_denoised=True, progress=progress)
        else:
            from hdit.diffusion import Denoiser, cfg_denoiser, sample

            fn = cfg_denoiser(Denoiser.for_run(run, model), labels, m.num_classes, cfg_scale)
            x = sample(fn, shape, steps, train.sigma_min, train.sigma_max, run.sample.rho, run.sample.eta, generator,
                       device, progress)
    return x.float(), labels


class OutputPeak:
    """Largest |output| of `model` over the forward passes since the last `take()` (NaN if any was NaN);
    accumulated on the device, read once per batch."""

    def __init__(self, model: torch.nn.Module):
        self.peak = None
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        m = output.detach().abs().amax().float()
        self.peak = m if self.peak is None else torch.maximum(self.peak, m)

    def take(self) -> float:
        value, self.peak = (0.0 if self.peak is None else self.peak.item()), None
        return value


def check_batch(x: torch.Tensor, peak: float, where: str) -> None:
    """Stop on non-finite or diverged values (module docstring); `where` names run, checkpoint step, shard."""
    bad = int((~torch.isfinite(x)).sum())
    fix = ("nothing was written for it. The checkpoint's weights have diverged or are damaged: sample an earlier "
           "checkpoint, or retrain (check log.csv for the loss)")
    if bad or not math.isfinite(peak):
        raise DivergedSamplesError(f"{where}: {bad} of {x.numel()} sample values are non-finite (largest network "
                                   f"output {peak:.3g}); {fix}")
    top = float(x.abs().max())
    if peak > DIVERGED_LIMIT or top > DIVERGED_LIMIT:
        raise DivergedSamplesError(f"{where}: network output up to {peak:.3g} and samples up to {top:.3g}, beyond "
                                   f"{DIVERGED_LIMIT:g} (targets have unit variance, data lie in [-1, 1]); {fix}")


def check_request(n: int, steps: int | None, cfg_scale: float | None, seed: int, batch_size: int) -> None:
    """The values a user passes, before anything is read or built."""
    for name, v in (("n", n), ("batch-size", batch_size)):
        if not isinstance(v, numbers.Integral) or v < 1:
            raise SampleError(f"--{name} {v}; expected a positive integer")
    if steps is not None and (not isinstance(steps, numbers.Integral) or steps < 1):
        raise SampleError(f"--steps {steps}; expected >= 1")
    if cfg_scale is not None and not (math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise SampleError(f"--cfg-scale {cfg_scale}; expected a finite number >= 0 (1 = no guidance, the paper's "
                          "Figure 9 uses 1-4)")
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise SampleError(f"--seed {seed}; expected an integer >= 0")


def _check_for_run(run: RunConfig, steps: int, cfg_scale: float) -> None:
    if cfg_scale != 1.0 and run.model.num_classes == 0:
        raise SampleError(f"--cfg-scale {cfg_scale} needs a class-conditional model; {run.id} is unconditional")
    if run.sample.sampler == "ddpm" and steps > DDPM_STEPS:
        raise SampleError(f"--steps {steps}; {run.id} samples with DDPM, whose diffusion has {DDPM_STEPS} steps: "
                          f"expected 1..{DDPM_STEPS}")


def sample_run(run_dir, out, n: int, steps: int | None = None, cfg_scale: float | None = None, seed: int = 0,
               batch_size: int = 64, device=None, progress: bool = True, compile: bool = False) -> dict:
    """Fill `out` with ceil(n / batch_size) shards (skipping existing ones); returns meta.json's record."""
    check_request(n, steps, cfg_scale, seed, batch_size)
    device = resolve_device(device)
    run, _ = read_run(run_dir)
    steps = run.sample.steps if steps is None else steps
    cfg_scale = run.sample.cfg_scale if cfg_scale is None else cfg_scale
    _check_for_run(run, steps, cfg_scale)
    out = Path(out)
    with RunLock(out, "hdit sample"):
        io.remove_stale_temporaries(out)
        run, record, model = load_run(run_dir, device)
        meta = _meta(run, record, run_dir, n, seed, steps, cfg_scale, batch_size)
        meta.update(compile=compile, precision=precision_label(autocast_args(device, run.train.precision)))
        _check_resume(out, meta)
        write_record(out / PARTIAL, meta)  # settings of the unfinished set; meta.json comes last
        num_shards = -(-n // batch_size)
        todo = [k for k in range(num_shards) if not (out / f"shard-{k:05d}.npz").exists()]
        peak = OutputPeak(model)
        net = torch.compile(model, dynamic=False) if compile else model  # the hook above is traced into its graph
        for k in tqdm(todo, desc=f"sample {run.id}", unit="shard", disable=not progress):
            count = min(batch_size, n - k * batch_size)
            x, labels = sample_batch(run, net, count, steps, cfg_scale, shard_generator(seed, k, device), device)
            check_batch(x, peak.take(), f"run {run_dir} (checkpoint step {record['checkpoint_step']}), shard {k} "
                                        f"({out / f'shard-{k:05d}.npz'}, seed {seed}, cfg scale {cfg_scale})")
            labels = np.full(count, -1, np.int64) if labels is None else labels.cpu().numpy().astype(np.int64)
            io.save_npz(out / f"shard-{k:05d}.npz", images=to_uint8(x), labels=labels,
                        **{key: np.array(meta[key]) for key in WEIGHTS_KEYS})
        meta.update(num_shards=num_shards, provenance=provenance(device))
        return write_set_record(out, meta, num_shards)  # written last: marks a complete set


def _meta(run: RunConfig, record: dict, run_dir, n, seed, steps, cfg_scale, batch_size) -> dict:
    edm = run.sample.sampler != "ddpm"
    return {"run": str(Path(run_dir)), "config_id": run.id, "profile": record.get("profile"), "n": n, "seed": seed,
            "sampler": run.sample.sampler, "steps": steps, "cfg_scale": cfg_scale, "batch_size": batch_size,
            "eta": run.sample.eta if edm else None, "rho": run.sample.rho if edm else None,
            "sigma_range": [run.train.sigma_min, run.train.sigma_max] if edm else None,
            "weights": "ema", "checkpoint_step": record["checkpoint_step"], "weights_file": record["weights_file"],
            "weights_sha256": record["weights_sha256"], "resolution": run.data.resolution,
            "num_classes": run.model.num_classes, "config": record["config"]}


PARTIAL = ".sampling.json"
RESUME_KEYS = ("run", "config_id", "n", "seed", "sampler", "steps", "cfg_scale", "batch_size", "checkpoint_step")
WEIGHTS_KEYS = ("checkpoint_step", "weights_sha256")  # stored in every shard: the weights that drew it


def _drawn_by(path: Path) -> dict:
    """The weights a shard records it was drawn from ({} for a shard written before shards recorded them)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key].item() for key in WEIGHTS_KEYS if key in z.files}
    except NPZ_ERRORS as e:
        raise damaged(path, f"not a readable shard ({type(e).__name__})", "delete it: it is drawn again") from None


def _set_aside_stale(out: Path, meta: dict) -> None:
    """Shards drawn from other weights than those sampled now (the run has moved on: an extended run), and the
    records describing them, are moved into `OUT/.superseded-step<S>[-k]/` (hidden: no reader takes them), with a
    warning; the set is then drawn afresh. Never relabelled, never deleted."""
    now = {key: meta[key] for key in WEIGHTS_KEYS}
    stale = [p for p in sorted(out.glob("shard-*.npz")) if _drawn_by(p) != now]
    fix = f"delete it, or move it with the shards beside it out of {out}"
    stale += [out / n for n in (PARTIAL, "meta.json") if (out / n).exists()
              and read_record(out / n, fix).get("checkpoint_step") != meta["checkpoint_step"]]
    if not stale:
        return
    steps = sorted({str(_drawn_by(p).get("checkpoint_step", "unknown")) for p in stale if p.suffix == ".npz"})
    base = dest = out / f".superseded-step{'+'.join(steps) or 'unknown'}"
    while dest.exists():  # an earlier set aside at the same step
        dest = base.with_name(f"{base.name}-{int(dest.name.rsplit('-', 1)[-1]) + 1 if dest != base else 2}")
    dest.mkdir()
    for path in stale:
        path.rename(dest / path.name)
    warnings.warn(f"{out}: {len(stale)} file(s) drawn from other weights of the run (step {', '.join(steps)}; "
                  f"it is now at step {meta['checkpoint_step']}) were moved, unchanged, to {dest} and are sampled "
                  "afresh: samples are never relabelled", stacklevel=3)


def _check_resume(out: Path, meta: dict) -> None:
    """Existing shards in `out` may only be reused by a job with the same settings and weights."""
    _set_aside_stale(out, meta)
    for name in (PARTIAL, "meta.json"):
        if (out / name).exists():
            old = read_record(out / name, "the settings of the shards beside it cannot be read back: delete it to "
                                          f"reuse them if they were made with these settings, otherwise delete {out}")
            diff = [k for k in RESUME_KEYS if old.get(k) != meta[k]]
            if diff:
                raise SampleError(f"{out} holds samples made with different settings "
                                  f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use the same settings "
                                  "to resume or another --out")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by `hdit train`")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, help="output directory for shard-%%05d.npz and meta.json")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's SampleConfig)")
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale w, 1 = none (default: config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="images per batch = per shard")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads {args.threads}; expected a positive integer", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        meta = sample_run(args.run, args.out, args.n, args.steps, args.cfg_scale, args.seed, args.batch_size,
                          args.device, progress=not args.no_progress, compile=args.compile)
    except (HarnessError, ConfigError) as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    print(f"{meta['n']} samples of {meta['config_id']} ({meta['sampler']}, {meta['steps']} steps, "
          f"cfg {meta['cfg_scale']}) -> {args.out}")
    return 0
