"""Gaussian diffusion of ADM / iDDPM as used by DiT (row R1 of Table 1).

Linear betas 1e-4..2e-2 over T = 1000 steps (Ho et al. 2020); the network predicts eps and, with a
learned variance (Nichol & Dhariwal 2021, "learned range"), an interpolation v in [-1, 1] between
log(beta_t) and log(beta~_t). Training uses the hybrid loss L_simple + lambda * L_vlb with lambda =
0.001 and a stop-gradient on the mean for the VLB term; since L_vlb = T * E_t[L_t], lambda * T = 1 for
T = 1000, so per sample the loss is mse(eps) + L_t (bits/dim). Sampling: DDPM ancestral sampling on a
respaced schedule (250 evenly spaced steps for DiT), where the model is fed the original timestep.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

VLB_LAMBDA = 1e-3  # iDDPM's lambda for L_hybrid


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> np.ndarray:
    """Ho et al.'s linear schedule, rescaled by 1000 / T as in iDDPM so that other T keep its shape."""
    scale = 1000 / num_steps
    return np.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=np.float64)


def space_timesteps(num_steps: int, count: int) -> list[int]:
    """`count` evenly spaced timesteps of [0, num_steps), first and last included (ADM's respacing)."""
    if not 1 <= count <= num_steps:
        raise ValueError(f"respaced steps {count}; expected 1..{num_steps}")
    if count == 1:
        return [num_steps - 1]
    stride = (num_steps - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


def _gather(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return a.to(x.device)[t].float().reshape(-1, *([1] * (x.ndim - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for x on the 256-level grid of [-1, 1] under N(mean, e^(2 log_scale)) (Ho et al. 2020, eq. 13).

    The edge bins extend to -inf / +inf. Uses the exact normal CDF.
    """
    inv = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv * (x - mean + 1 / 255))
    cdf_minus = torch.special.ndtr(inv * (x - mean - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1 - cdf_minus).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta))


class GaussianDiffusion:
    """q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0) and p(x_{t-1} | x_t) with learned variance.

    `timestep_map[i]` is the original timestep fed to the model for respaced step i.
    """

    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None, learn_sigma: bool = True):
        betas = np.asarray(betas, dtype=np.float64)
        self.num_steps = len(betas)
        self.learn_sigma = learn_sigma
        self.timestep_map = torch.tensor(timestep_map if timestep_map is not None else range(self.num_steps))
        abar = np.cumprod(1 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
        self.betas, self.alphas_cumprod, self.alphas_cumprod_prev = t(betas), t(abar), t(abar_prev)
        self.sqrt_abar, self.sqrt_one_minus_abar = t(np.sqrt(abar)), t(np.sqrt(1 - abar))
        self.sqrt_recip_abar, self.sqrt_recipm1_abar = t(np.sqrt(1 / abar)), t(np.sqrt(1 / abar - 1))
        self.posterior_variance = t(post_var)
        # log(beta~_0) = log(0): clipped to beta~_1 as in iDDPM
        self.posterior_log_variance_clipped = t(np.log(np.append(post_var[1], post_var[1:])))
        self.posterior_mean_coef1 = t(betas * np.sqrt(abar_prev) / (1 - abar))
        self.posterior_mean_coef2 = t((1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar))
        self.log_betas = t(np.log(betas))

    @classmethod
    def ddpm(cls, num_steps: int = 1000, respace: int | None = None, learn_sigma: bool = True) -> "GaussianDiffusion":
        """R1's diffusion: linear betas, T = 1000; `respace` = number of sampling steps (DiT: 250)."""
        betas = linear_betas(num_steps)
        if respace is None or respace == num_steps:
            return cls(betas, learn_sigma=learn_sigma)
        keep = space_timesteps(num_steps, respace)
        abar = np.cumprod(1 - betas)
        new_betas, last = [], 1.0
        for i in keep:  # beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}}
            new_betas.append(1 - abar[i] / last)
            last = abar[i]
        return cls(np.array(new_betas), timestep_map=keep, learn_sigma=learn_sigma)

    def to(self, device) -> "GaussianDiffusion":
        """Move the schedule tables to `device` (avoids a host-to-device copy per lookup)."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0, t, noise):
        return _gather(self.sqrt_abar, t, x0) * x0 + _gather(self.sqrt_one_minus_abar, t, x0) * noise

    def q_posterior(self, x0, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = _gather(self.posterior_mean_coef1, t, x_t) * x0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _gather(self.posterior_variance, t, x_t), _gather(self.posterior_log_variance_clipped, t, x_t)

    def predict_x0(self, x_t, t, eps):
        return _gather(self.sqrt_recip_abar, t, x_t) * x_t - _gather(self.sqrt_recipm1_abar, t, x_t) * eps

    # ------------------------------------------------------------------ reverse process
    def split_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """(eps, log-variance) from the model output; learned range: frac*log(beta) + (1-frac)*log(beta~)."""
        if not self.learn_sigma:
            return out, _gather(self.posterior_log_variance_clipped, t, x_t)
        eps, v = out.chunk(2, dim=1)
        frac = (v + 1) / 2
        log_var = frac * _gather(self.log_betas, t, x_t) + (1 - frac) * _gather(self.posterior_log_variance_clipped, t, x_t)
        return eps, log_var

    def p_mean_variance(self, out, x_t, t, clip_denoised: bool = True):
        eps, log_var = self.split_output(out, x_t, t)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return mean, log_var, x0

    def model_out(self, model, x_t, t, class_labels=None):
        return model(x_t, self.timestep_map.to(x_t.device)[t].float(), class_labels).float()

    # ------------------------------------------------------------------ losses
    def vb_terms_bpd(self, mean, log_var, x0, x_t, t):
        """L_t in bits/dim: KL(q(x_{t-1}|x_t,x0) || p) for t > 0, decoder NLL for t = 0."""
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1) / math.log(2)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).mean(1) / math.log(2)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model, x0, t, noise, class_labels=None) -> dict[str, torch.Tensor]:
        """Per-sample hybrid loss (iDDPM): mse(eps) + lambda * T * L_t with the mean's gradient stopped."""
        x_t = self.q_sample(x0, t, noise)
        out = self.model_out(model, x_t, t, class_labels)
        mse = (out[:, : x0.shape[1]] - noise).pow(2).flatten(1).mean(1)
        terms = {"mse": mse}
        if self.learn_sigma:
            eps, v = out.chunk(2, dim=1)
            frozen = torch.cat([eps.detach(), v], dim=1)  # the VLB term only trains the variance
            mean, log_var, _ = self.p_mean_variance(frozen, x_t, t, clip_denoised=False)
            terms["vb"] = self.vb_terms_bpd(mean, log_var, x0, x_t, t) * (VLB_LAMBDA * self.num_steps)
            terms["loss"] = mse + terms["vb"]
        else:
            terms["loss"] = mse
        return terms

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def p_sample_loop(self, model_fn, shape, generator=None, device=None, clip_denoised: bool = True,
                      progress: bool = False) -> torch.Tensor:
        """Ancestral sampling: x_{t-1} = mean + exp(log_var / 2) * z (no noise at t = 0).

        `model_fn(x_t, t_model_float)` returns the raw model output (eps and v channels).
        """
        x = torch.randn(shape, generator=generator, device=device)
        for i in tqdm(reversed(range(self.num_steps)), total=self.num_steps, disable=not progress,
                      desc="ddpm", leave=False):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            out = model_fn(x, self.timestep_map.to(device)[t].float()).float()
            mean, log_var, _ = self.p_mean_variance(out, x, t, clip_denoised)
            if i > 0:
                x = mean + torch.exp(0.5 * log_var) * torch.randn(shape, generator=generator, device=device)
            else:
                x = mean
        return x
