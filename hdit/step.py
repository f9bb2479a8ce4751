"""One training step, shared by `hdit train` and `hdit bench` (so the benchmark times what training runs).

A step (paper §5, Table 6): class dropout to the null class, non-leaking augmentation where the config
asks for it (FFHQ-1024), the objective's noise draw (EDM: interpolated-cosine σ with u stratified over the
global batch; R1: a uniform DDPM timestep), the weighted loss, backward, AdamW at the scheduled lr, and the
EMA update with its warm-up.

World-size invariance (issue 22): every draw is keyed by (seed, step, global sample index) (`hdit.draws`), and
a rank's batch (a contiguous slice of the global batch, `hdit.data.BatchStream`) is split into `accum`
contiguous micro-batches. Each micro-batch's loss is its mean / accum, so the accumulated gradient, averaged
over ranks by DDP (its all-reduce runs on the last micro-batch only: `no_sync` before), is the gradient of the
mean over the global batch, whatever the partition. Nothing in a step reads a value back to the host: the loss
comes back as a device tensor, so the caller decides when to synchronise.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from hdit.configs import PRECISIONS, ConfigError, RunConfig
from hdit.data.augment import apply_augment, sample_augment_cond
from hdit.diffusion import Denoiser, sample_sigma
from hdit.draws import SCALARS, StepDraws, step_words
from hdit.ema import ema_decay, ema_update


def drop_labels(labels: torch.Tensor | None, num_classes: int, p: float, u: torch.Tensor | None):
    """Class dropout to the null class (index num_classes) where the uniform draw u < p; None for unconditional
    models."""
    if num_classes == 0 or labels is None:
        return None
    return torch.where(u < p, torch.full_like(labels, num_classes), labels)


class EDMObjective:
    """The HDiT trainer's loss (§3 of docs/METHOD.md): F-space EDM loss with the row's weighting."""

    def __init__(self, run: RunConfig, model: torch.nn.Module):
        self.run = run
        self.denoiser = Denoiser.for_run(run, model)
        self.description = f"edm ({self.denoiser.noise_cond})"

    def draw_level(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """σ of a global batch of n (u stratified over all n)."""
        t = self.run.train
        return sample_sigma(n, self.run.data.resolution, gen, t.sigma_min, t.sigma_max, t.sigma_data, gen.device)

    def __call__(self, x: torch.Tensor, noise: torch.Tensor, labels, sigma: torch.Tensor, aug_cond=None):
        train = self.run.train
        return self.denoiser.loss(x, noise, sigma, labels, train.weighting, train.gamma, aug_cond)


class DDPMObjective:
    """R1: DiT's own objective, ε-prediction plus the hybrid VLB term for the learned variance (DiT §3)."""

    description = "ddpm"

    def __init__(self, run: RunConfig, model: torch.nn.Module):
        from baselines.gaussian_diffusion import GaussianDiffusion

        device = next(model.parameters()).device
        self.diffusion = GaussianDiffusion.ddpm(1000, learn_sigma=run.model.learn_sigma).to(device)
        self.model = model

    def draw_level(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.diffusion.num_steps, (n,), generator=gen, device=gen.device)

    def __call__(self, x: torch.Tensor, noise: torch.Tensor, labels, t: torch.Tensor, aug_cond=None):
        return self.diffusion.training_losses(self.model, x, t, noise, labels)["loss"]


OBJECTIVES = {"edm": EDMObjective, "ddpm": DDPMObjective}


def make_objective(run: RunConfig, model: torch.nn.Module):
    return OBJECTIVES[run.train.objective](run, model)


@dataclass
class TrainStep:
    """Model (`net`: the possibly DDP/compiled wrapper of `raw`), EMA and optimiser of one run; this rank's place
    in the global batch (`rank` of `world_size`, each rank's batch in `accum` micro-batches)."""

    run: RunConfig
    raw: torch.nn.Module
    net: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    amp: dict
    rank: int = 0
    world_size: int = 1
    accum: int = 1

    def __post_init__(self):
        self.objective = make_objective(self.run, self.net)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]  # the groups' ratios (lr/3) survive the schedule
        device = next(self.raw.parameters()).device
        self.gen, self.noise_gen = torch.Generator(device), torch.Generator(device)

    def lr(self, step: int) -> float:
        return self.run.train.lr * self.run.train.lr_factor(step)

    def draws(self, step: int, batch: int) -> StepDraws:
        """The keyed draws of the global batch at `step` (`hdit.draws`), in a fixed order on one generator."""
        train, words = self.run.train, step_words(self.run.train.seed, step, batch)
        self.gen.manual_seed(words[SCALARS])
        d = StepDraws(words, self.objective.draw_level(batch, self.gen))
        if self.run.model.num_classes:
            d.drop = torch.rand(batch, generator=self.gen, device=self.gen.device)
        if train.augment_prob > 0:  # non-leaking augmentation (FFHQ-1024, Table 6): the model sees its vector
            d.aug = sample_augment_cond(batch, train.augment_prob, self.gen)
        return d

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None, step: int) -> torch.Tensor:
        """Train on this rank's batch at (0-based) `step`; returns its mean loss as a device tensor."""
        train, n = self.run.train, x.shape[0]
        if n % self.accum:
            raise ValueError(f"batch of {n} on this rank does not split into {self.accum} micro-batches")
        factor = train.lr_factor(step)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * factor
        d, m, total = self.draws(step, n * self.world_size), n // self.accum, 0
        for j in range(self.accum):
            part = slice(j * m, (j + 1) * m)
            # DDP all-reduces the accumulated gradients once, in the last micro-batch's backward
            last = j == self.accum - 1 or not hasattr(self.net, "no_sync")
            with contextlib.nullcontext() if last else self.net.no_sync():
                total = total + self._micro(x[part], None if labels is None else labels[part], d, self.rank * n + j * m)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        ema_update(self.ema, self.raw, ema_decay(step, train.ema_decay, train.ema_warmup_power, train.ema_warmup_gamma))
        return total / self.accum

    def _micro(self, x: torch.Tensor, labels, d: StepDraws, lo: int) -> torch.Tensor:
        """Forward and backward of the micro-batch of global samples lo .. lo + len(x) - 1."""
        n, train = x.shape[0], self.run.train
        labels = drop_labels(labels, self.run.model.num_classes, train.cond_dropout,
                             None if d.drop is None else d.drop[lo:lo + n])
        aug_cond = None if d.aug is None else d.aug[lo:lo + n]
        if aug_cond is not None:
            x = apply_augment(x, aug_cond)
        noise = d.noise(lo, x.shape, self.noise_gen)
        d.seed_model_rng(lo)
        with torch.autocast(**self.amp):
            loss = self.objective(x, noise, labels, d.level[lo:lo + n], aug_cond).mean()
        (loss / self.accum).backward()
        return loss.detach()


def make_optimizer(raw: torch.nn.Module, run: RunConfig) -> torch.optim.AdamW:
    """AdamW on the model's parameter groups (§2: lr/3 and no-decay groups). Fused on every device: on CPU it
    takes ~6x less time than the per-tensor loop."""
    train = run.train
    return torch.optim.AdamW(raw.param_groups(train.lr, train.weight_decay), lr=train.lr, betas=tuple(train.betas), eps=train.eps,
                             weight_decay=train.weight_decay, fused=True)


def autocast_args(device: torch.device, precision: str) -> dict:
    """`torch.autocast` arguments for TrainConfig.precision on `device`: "bf16" casts on CUDA only (Table 6; a CPU
    runs the same call in fp32), "bf16-all" on every device (the CPU tests of the bf16 path), "fp32" nowhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}; expected one of {PRECISIONS}")
    enabled = precision == "bf16-all" or (precision == "bf16" and device.type == "cuda")
    return dict(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def precision_label(amp: dict) -> str:
    """What `autocast_args` turned on, as config.json, meta.json and the bench records name it."""
    return "bf16-autocast" if amp["enabled"] else "fp32"
