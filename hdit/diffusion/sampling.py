"""Karras noise schedule, DPM++(3M) SDE and classifier-free guidance (paper Table 6, Figure 9).

The sampler is DPM-Solver++(3M) SDE (Lu et al. 2022; k-diffusion's third-order multistep SDE variant)
with eta = 1 on the Karras et al. (2022) schedule, rho = 7. The schedule ends in sigma = 0, so the last
step returns the denoised estimate. Noise is drawn from an explicit torch.Generator (i.i.d. Gaussian
per step), so a seed fixes the samples.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma[B]) -> denoised x


def karras_sigmas(n: int, sigma_min: float = 1e-3, sigma_max: float = 1e3, rho: float = 7.0,
                  device=None) -> torch.Tensor:
    """n noise levels from sigma_max to sigma_min (Karras et al. 2022, eq. 5), then a final 0."""
    if n < 1:
        raise ValueError(f"steps={n}; expected >= 1")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)


def cfg_denoiser(denoiser: Callable, class_labels: torch.Tensor | None, null_label: int,
                 cfg_scale: float = 1.0) -> DenoiseFn:
    """D = D_uncond + w * (D_cond - D_uncond); w = 1 is no guidance and skips the unconditional pass.

    `denoiser(x, sigma, labels)`; both passes run as one batch of 2B.
    """
    if cfg_scale == 1.0 or class_labels is None:
        return lambda x, sigma: denoiser(x, sigma, class_labels)

    def guided(x, sigma):
        null = torch.full_like(class_labels, null_label)
        d = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([class_labels, null]))
        d_cond, d_uncond = d.chunk(2)
        return d_uncond + cfg_scale * (d_cond - d_uncond)

    return guided


@torch.no_grad()
def sample_dpmpp_3m_sde(denoise: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 1.0,
                        generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(3M) SDE. `x` is the initial noise already scaled by sigmas[0].

    Works in t = -log(sigma); each step takes the exponential-integrator update of the data
    prediction with the step h * (1 + eta), adds second/third-order multistep corrections from the
    previous two denoised values, then re-injects noise sigma_next * sqrt(1 - exp(-2 h eta)).
    """
    d_prev = d_prev2 = None
    h_prev = h_prev2 = None
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="sampling", leave=False):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma.expand(x.shape[0]))
        if sigma_next == 0:  # last step: return the denoised estimate
            x = denoised
            continue
        h = torch.log(sigma) - torch.log(sigma_next)
        h_eta = h * (eta + 1)
        x = torch.exp(-h_eta) * x - torch.expm1(-h_eta) * denoised
        phi_2 = torch.expm1(-h_eta) / h_eta + 1
        if h_prev2 is not None:  # third order
            r0, r1 = h_prev / h, h_prev2 / h
            d1_0 = (denoised - d_prev) / r0
            d1_1 = (d_prev - d_prev2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h_prev is not None:  # second order
            x = x + phi_2 * (denoised - d_prev) / (h_prev / h)
        if eta:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + noise * sigma_next * torch.sqrt(-torch.expm1(-2 * h * eta))
        d_prev, d_prev2 = denoised, d_prev
        h_prev, h_prev2 = h, h_prev
    return x


def sample(denoise: DenoiseFn, shape: tuple[int, ...], steps: int = 50, sigma_min: float = 1e-3,
           sigma_max: float = 1e3, rho: float = 7.0, eta: float = 1.0, generator: torch.Generator | None = None,
           device=None, progress: bool = False) -> torch.Tensor:
    """Draw x_T ~ N(0, sigma_max^2 I) from `generator` and run DPM++(3M) SDE on the Karras schedule."""
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=device)
    x = torch.randn(shape, generator=generator, device=device) * sigmas[0]
    return sample_dpmpp_3m_sde(denoise, x, sigmas, eta, generator, progress)
