"""One training step, shared by `hdit train` and `hdit bench` (so the benchmark times what training runs).

A step (paper §5, Table 6): class dropout to the null class, non-leaking augmentation where the config
asks for it (FFHQ-1024), the objective's noise draw (EDM: interpolated-cosine σ with u stratified over the
global batch; R1: a uniform DDPM timestep), the weighted loss, backward, AdamW at the scheduled lr, and the
EMA update with its warm-up. Nothing in it reads a value back to the host: the loss comes back as a
device tensor, so the caller decides when to synchronise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hdit.configs import PRECISIONS, ConfigError, RunConfig
from hdit.data.augment import non_leaky_augment
from hdit.diffusion import Denoiser, sample_sigma
from hdit.ema import ema_decay, ema_update


def drop_labels(labels: torch.Tensor | None, num_classes: int, p: float, gen: torch.Generator):
    """Class dropout to the null class (index num_classes) with probability p; None for unconditional models."""
    if num_classes == 0 or labels is None:
        return None
    drop = torch.rand(labels.shape, generator=gen, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


class EDMObjective:
    """The HDiT trainer's loss (§3 of docs/METHOD.md): F-space EDM loss with the row's weighting."""

    def __init__(self, run: RunConfig, model: torch.nn.Module, rank: int = 0, world_size: int = 1):
        self.run, self.rank, self.world_size = run, rank, world_size
        self.denoiser = Denoiser.for_run(run, model)
        self.description = f"edm ({self.denoiser.noise_cond})"

    def __call__(self, x: torch.Tensor, noise: torch.Tensor, labels, gen: torch.Generator, aug_cond=None):
        train = self.run.train
        sigma = sample_sigma(x.shape[0], self.run.data.resolution, gen, self.rank, self.world_size, train.sigma_min,
                             train.sigma_max, train.sigma_data, device=x.device)
        return self.denoiser.loss(x, noise, sigma, labels, train.weighting, train.gamma, aug_cond)


class DDPMObjective:
    """R1: DiT's own objective, ε-prediction plus the hybrid VLB term for the learned variance (DiT §3)."""

    description = "ddpm"

    def __init__(self, run: RunConfig, model: torch.nn.Module, rank: int = 0, world_size: int = 1):
        from baselines.gaussian_diffusion import GaussianDiffusion

        device = next(model.parameters()).device
        self.diffusion = GaussianDiffusion.ddpm(1000, learn_sigma=run.model.learn_sigma).to(device)
        self.model = model

    def __call__(self, x: torch.Tensor, noise: torch.Tensor, labels, gen: torch.Generator, aug_cond=None):
        t = torch.randint(0, self.diffusion.num_steps, (x.shape[0],), generator=gen, device=x.device)
        return self.diffusion.training_losses(self.model, x, t, noise, labels)["loss"]


OBJECTIVES = {"edm": EDMObjective, "ddpm": DDPMObjective}


def make_objective(run: RunConfig, model: torch.nn.Module, rank: int = 0, world_size: int = 1):
    return OBJECTIVES[run.train.objective](run, model, rank, world_size)


@dataclass
class TrainStep:
    """Model (`net`: the possibly DDP/compiled wrapper of `raw`), EMA, optimiser and generator of one run."""

    run: RunConfig
    raw: torch.nn.Module
    net: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    amp: dict
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        self.objective = make_objective(self.run, self.net, self.rank, self.world_size)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]  # the groups' ratios (lr/3) survive the schedule

    def lr(self, step: int) -> float:
        return self.run.train.lr * self.run.train.lr_factor(step)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None, step: int) -> torch.Tensor:
        """Train on one batch at (0-based) `step`; returns the mean loss as a device tensor."""
        train = self.run.train
        labels = drop_labels(labels, self.run.model.num_classes, train.cond_dropout, self.gen)
        factor = train.lr_factor(step)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * factor
        aug_cond = None
        if train.augment_prob > 0:  # non-leaking augmentation (FFHQ-1024, Table 6): the model sees its vector
            x, aug_cond = non_leaky_augment(x, train.augment_prob, self.gen)
        noise = torch.randn(x.shape, generator=self.gen, device=x.device)
        with torch.autocast(**self.amp):
            loss = self.objective(x, noise, labels, self.gen, aug_cond).mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        ema_update(self.ema, self.raw, ema_decay(step, train.ema_decay, train.ema_warmup_power, train.ema_warmup_gamma))
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
