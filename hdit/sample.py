"""`hdit sample`: draw images from a trained run's EMA weights into resumable .npz shards.

    hdit sample --run RUN --n 500 --out DIR [--steps S] [--cfg-scale W] [--seed S] [--batch-size B] [--device D]

- Sampler and steps default to the run's SampleConfig: DPM++(3M) SDE (eta 1, Karras rho 7, sigma range of
  the TrainConfig) for EDM runs, DDPM ancestral sampling respaced to `steps` for R1.
- CFG: D = D_u + w (D_c - D_u) (DDPM: on eps), w = 1 is no guidance (one model pass).
- Shard k holds samples [k * B, (k + 1) * B): its class labels (uniform over the classes; unconditional
  models draw none and store -1) and all its noise come from a generator seeded with (seed, k), so the output
  is the same wherever a killed job resumed. Each shard is one batch, written atomically as
  `shard-%05d.npz` (uint8 NHWC `images`, int64 `labels`); existing shards are skipped.
- meta.json (written last: it marks a complete set) records the run, config, profile, n, seed, sampler,
  steps, cfg_scale, batch size and provenance. While shards are being written the same settings sit in
  `.sampling.json`; resuming with different settings is refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hdit import io
from hdit.configs import ConfigError, RunConfig
from hdit.provenance import provenance


class SampleError(ValueError):
    """Bad sampling request (missing run, mismatched resume, ...)."""


def load_run(run_dir, device="cpu") -> tuple[RunConfig, dict, torch.nn.Module]:
    """(RunConfig, config.json record, EMA model in eval mode) of a run directory."""
    from hdit.model import build_model

    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoint.pt"
    if not cfg_path.exists() or not ckpt_path.exists():
        raise SampleError(f"{str(run_dir)!r} is not a trained run (needs config.json and checkpoint.pt; "
                          "run `hdit train` first)")
    record = json.loads(cfg_path.read_text())
    run = RunConfig.from_dict(record["config"])
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    model = build_model(run.model)
    model.load_state_dict(ckpt["ema"])
    record["checkpoint_step"] = int(ckpt["step"])
    return run, record, model.to(device).eval().requires_grad_(False)


def shard_generator(seed: int, shard: int, device) -> torch.Generator:
    state = np.random.SeedSequence([seed, shard]).generate_state(1, np.uint64)[0] >> 1
    return torch.Generator(device).manual_seed(int(state))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> uint8 NHWC (round to nearest, like the data pipeline's / 127.5 - 1)."""
    return (x.float() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sample_batch(run: RunConfig, model, n: int, steps: int, cfg_scale: float, generator: torch.Generator,
                 device, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples (float [-1, 1]) and their labels; labels first, then all noise, from `generator`."""
    m, t = run.model, run.train
    labels = torch.randint(0, m.num_classes, (n,), generator=generator, device=device) if m.num_classes else None
    shape = (n, m.in_channels, run.data.resolution, run.data.resolution)
    amp = dict(device_type=torch.device(device).type, dtype=torch.bfloat16,
               enabled=torch.device(device).type == "cuda" and t.precision == "bf16")
    with torch.no_grad(), torch.autocast(**amp):
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
            x = sample(fn, shape, steps, t.sigma_min, t.sigma_max, run.sample.rho, run.sample.eta, generator,
                       device, progress)
    return x.float().clamp(-1, 1), labels


def sample_run(run_dir, out, n: int, steps: int | None = None, cfg_scale: float | None = None, seed: int = 0,
               batch_size: int = 64, device=None, progress: bool = True) -> dict:
    """Fill `out` with ceil(n / batch_size) shards (skipping existing ones); returns meta.json's record."""
    if n < 1 or batch_size < 1:
        raise SampleError(f"--n {n} / --batch-size {batch_size}; expected positive integers")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SampleError("--device cuda was requested but torch sees no CUDA device")
    run, record, model = load_run(run_dir, device)
    steps = run.sample.steps if steps is None else steps
    cfg_scale = run.sample.cfg_scale if cfg_scale is None else cfg_scale
    if steps < 1:
        raise SampleError(f"--steps {steps}; expected >= 1")
    if cfg_scale != 1.0 and run.model.num_classes == 0:
        raise SampleError(f"--cfg-scale {cfg_scale} needs a class-conditional model; {run.id} is unconditional")
    sampler = run.sample.sampler
    meta = {"run": str(Path(run_dir)), "config_id": run.id, "profile": record.get("profile"), "n": n, "seed": seed,
            "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale, "batch_size": batch_size,
            "eta": run.sample.eta if sampler != "ddpm" else None, "rho": run.sample.rho if sampler != "ddpm" else None,
            "sigma_range": [run.train.sigma_min, run.train.sigma_max] if sampler != "ddpm" else None,
            "weights": "ema", "checkpoint_step": record["checkpoint_step"], "resolution": run.data.resolution,
            "num_classes": run.model.num_classes, "config": record["config"]}
    out = Path(out)
    _check_resume(out, meta)
    io.write_json(out / PARTIAL, meta)  # settings of the unfinished set; meta.json comes last

    num_shards = -(-n // batch_size)
    todo = [k for k in range(num_shards) if not (out / f"shard-{k:05d}.npz").exists()]
    for k in tqdm(todo, desc=f"sample {run.id}", unit="shard", disable=not progress):
        count = min(batch_size, n - k * batch_size)
        x, labels = sample_batch(run, model, count, steps, cfg_scale, shard_generator(seed, k, device), device)
        labels = np.full(count, -1, np.int64) if labels is None else labels.cpu().numpy().astype(np.int64)
        io.save_npz(out / f"shard-{k:05d}.npz", images=to_uint8(x), labels=labels)
    meta.update(num_shards=num_shards, provenance=provenance(device))
    io.write_json(out / "meta.json", meta)  # marks a complete set
    (out / PARTIAL).unlink(missing_ok=True)
    return meta


PARTIAL = ".sampling.json"
RESUME_KEYS = ("run", "config_id", "n", "seed", "sampler", "steps", "cfg_scale", "batch_size", "checkpoint_step")


def _check_resume(out: Path, meta: dict) -> None:
    """Existing shards in `out` may only be reused by a job with the same settings."""
    for name in (PARTIAL, "meta.json"):
        if (out / name).exists():
            old = json.loads((out / name).read_text())
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
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads {args.threads}; expected a positive integer", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        meta = sample_run(args.run, args.out, args.n, args.steps, args.cfg_scale, args.seed, args.batch_size,
                          args.device, progress=not args.no_progress)
    except (SampleError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{meta['n']} samples of {meta['config_id']} ({meta['sampler']}, {meta['steps']} steps, "
          f"cfg {meta['cfg_scale']}) -> {args.out}")
    return 0
