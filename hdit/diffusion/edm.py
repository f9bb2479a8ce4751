"""EDM preconditioning, loss weightings and the training noise-level density (docs/METHOD.md §3).

Karras et al. (2022) preconditioning with sigma_data = 0.5; the network F is trained on the F-space
target (x0 - c_skip * x_noisy) / c_out. Loss weightings are defined in x0 space (HDiT paper eq. 7-9,
data in [-1, 1]) and converted to F space by multiplying with c_out^2 (paper eq. 5).
"""
from __future__ import annotations

import math

import torch
from torch import nn

WEIGHTINGS = ("snr", "min-snr", "soft-min-snr")
NOISE_CONDS = ("c_noise", "dit_timestep")


# ----------------------------------------------------------------------------- preconditioning

def scalings(sigma: torch.Tensor, sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's (c_skip, c_out, c_in) for noise level `sigma` (Karras et al. 2022, Table 1)."""
    s2, sd2 = sigma ** 2, sigma_data ** 2
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / (s2 + sd2).sqrt()
    c_in = 1 / (s2 + sd2).sqrt()
    return c_skip, c_out, c_in


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """HDiT's noise conditioning input: log(sigma) / 4."""
    return sigma.log() / 4


def dit_timestep(sigma: torch.Tensor, sigma_min: float = 1e-3, sigma_max: float = 1e3) -> torch.Tensor:
    """R2: the noise level as a DDPM-like timestep for DiT's sinusoidal timestep embedder.

    The map is affine in log(sigma) (equivalently in c_noise): t = 1000 * (log sigma - log sigma_min) /
    (log sigma_max - log sigma_min), so the training range [1e-3, 1e3] covers t in [0, 1000] like DiT's
    1000 DDPM steps, increasing with the noise level. It is injective over the whole EDM range (a
    lookup into the DDPM linear schedule would clamp: that schedule only spans sigma ~ 0.01..157).
    """
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return 1000 * (sigma.log() - lo) / (hi - lo)


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


class Denoiser(nn.Module):
    """D(x_noisy, sigma) = c_skip * x_noisy + c_out * F(c_in * x_noisy, noise_cond(sigma), labels).

    `noise_cond="c_noise"` (HDiT: log(sigma)/4) or `"dit_timestep"` (DiT in the EDM trainer, R2; see
    `dit_timestep`). `net` follows the model contract in docs/ARCHITECTURE.md.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, noise_cond: str = "c_noise",
                 sigma_min: float = 1e-3, sigma_max: float = 1e3):
        super().__init__()
        if noise_cond not in NOISE_CONDS:
            raise ValueError(f"noise_cond={noise_cond!r}; expected one of {NOISE_CONDS}")
        self.net, self.sigma_data, self.noise_cond = net, sigma_data, noise_cond
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    @classmethod
    def for_run(cls, run, net: nn.Module) -> "Denoiser":
        """The Denoiser of a RunConfig's EDM objective: HDiT gets c_noise, DiT under EDM (R2) its timestep."""
        train = run.train
        return cls(net, train.sigma_data, "dit_timestep" if run.model.family == "dit" else "c_noise",
                   train.sigma_min, train.sigma_max)

    def cond(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.noise_cond == "c_noise":
            return c_noise(sigma)
        return dit_timestep(sigma, self.sigma_min, self.sigma_max)

    def raw(self, x_noisy: torch.Tensor, sigma: torch.Tensor, class_labels=None, aug_cond=None) -> torch.Tensor:
        """F(c_in * x, noise_cond, labels[, aug_cond]) in fp32 (the network may run under autocast).
        `aug_cond`: the [B, 9] augmentation vector of non-leaking augmentation (training only; None = zeros)."""
        _, _, c_in = scalings(sigma, self.sigma_data)
        args = (x_noisy * _expand(c_in, x_noisy), self.cond(sigma), class_labels)
        return (self.net(*args) if aug_cond is None else self.net(*args, aug_cond)).float()

    def forward(self, x_noisy: torch.Tensor, sigma: torch.Tensor, class_labels=None) -> torch.Tensor:
        c_skip, c_out, _ = (_expand(c, x_noisy) for c in scalings(sigma, self.sigma_data))
        return c_skip * x_noisy + c_out * self.raw(x_noisy, sigma, class_labels)

    def loss(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, class_labels=None,
             weighting: str = "soft-min-snr", gamma: float = 4.0, aug_cond=None) -> torch.Tensor:
        """Per-sample F-space loss: w_F(sigma) * mean((F - target)^2), target = (x0 - c_skip x_noisy) / c_out."""
        x_noisy = x0 + noise * _expand(sigma, x0)
        c_skip, c_out, _ = (_expand(c, x0) for c in scalings(sigma, self.sigma_data))
        target = (x0 - c_skip * x_noisy) / c_out
        err = (self.raw(x_noisy, sigma, class_labels, aug_cond) - target).pow(2).flatten(1).mean(1)
        return err * f_weighting(weighting, sigma, gamma, self.sigma_data)


# ----------------------------------------------------------------------------- loss weightings

def weighting(name: str, sigma: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """x0-space loss weight (paper Appendix B; Figure 8 plots min-snr and soft-min-snr at gamma 5).

    snr: 1/sigma^2 (eq. 7); min-snr: min(1/sigma^2, gamma) (eq. 8); soft-min-snr: 1/(sigma^2 + 1/gamma) (eq. 9).
    """
    snr = sigma.pow(-2)
    if name == "snr":
        return snr
    if name == "min-snr":
        return snr.clamp(max=gamma)
    if name == "soft-min-snr":
        return 1 / (sigma ** 2 + 1 / gamma)
    raise ValueError(f"weighting={name!r}; expected one of {WEIGHTINGS}")


def f_weighting(name: str, sigma: torch.Tensor, gamma: float = 4.0, sigma_data: float = 0.5) -> torch.Tensor:
    """The same weight in F space: x0-space weight * c_out^2 (paper eq. 5).

    soft-min-snr with gamma = 4 and sigma_data = 0.5 gives (sigma*sd)^2 / (sigma^2 + sd^2)^2.
    """
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    return weighting(name, sigma, gamma) * c_out ** 2


# ----------------------------------------------------------------------------- sigma density

def stratified_uniform(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """u in [0, 1): one sample per stratum, u_i = (i + r_i) / n with r_i uniform, n = the GLOBAL batch (the authors
    stratify over the whole batch). A rank or micro-batch takes its contiguous slice (`hdit.draws`), so the
    strata do not depend on how the batch is split. Drawn on the generator's device (no host-device copy)."""
    gen_device = generator.device if generator is not None else device
    offsets = torch.arange(n, dtype=torch.float64, device=gen_device)
    u = (offsets + torch.rand(n, generator=generator, dtype=torch.float64, device=gen_device)) / n
    return u.to(device=device, dtype=torch.float32)


def _logsnr_cosine(u: torch.Tensor, logsnr_start: float, logsnr_end: float) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021) in logSNR, from `logsnr_start` at u = 0 to `logsnr_end` at u = 1.

    logSNR = -2 log tan(a), a linear in u between the angles of the two ends.
    """
    a_start = math.atan(math.exp(-0.5 * logsnr_start))
    a_end = math.atan(math.exp(-0.5 * logsnr_end))
    return -2 * torch.log(torch.tan(a_start + u * (a_end - a_start)))


def _logsnr_cosine_shifted(u, image_d: int, noise_d: int, logsnr_start: float, logsnr_end: float):
    """Simple diffusion's resolution shift (Hoogeboom et al. 2023, Sec. 3): logSNR + 2 log(noise_d / image_d),
    with the range shifted the other way so the shifted schedule still spans [logsnr_start, logsnr_end]."""
    shift = 2 * math.log(noise_d / image_d)
    return _logsnr_cosine(u, logsnr_start - shift, logsnr_end - shift) + shift


def logsnr_cosine_interpolated(u: torch.Tensor, image_d: int, noise_d_low: int = 32, noise_d_high: int | None = None,
                               sigma_min: float = 1e-3, sigma_max: float = 1e3, sigma_data: float = 0.5):
    """logSNR(u) = (1-u) * shifted_cos(u; 32) + u * shifted_cos(u; image_size) (HDiT Sec. 5.1, from simple
    diffusion's interpolated schedule).

    Direction (the authors' k-diffusion code; docs/METHOD.md §3 gives the sigma(u) quantiles): u = 0 is
    sigma_max, u = 1 is sigma_min, so the 32-px-shifted schedule carries the weight (1-u) at HIGH noise and the
    image-size one at low noise. Run the other way, the median is unchanged but the spread collapses and sigma(u) is no longer
    monotonic above 512 px.
    """
    noise_d_high = noise_d_high or image_d
    logsnr_noisy = -2 * math.log(sigma_max / sigma_data)  # logSNR of sigma_max, in units of sigma_data
    logsnr_clean = -2 * math.log(sigma_min / sigma_data)
    low = _logsnr_cosine_shifted(u, image_d, noise_d_low, logsnr_noisy, logsnr_clean)
    high = _logsnr_cosine_shifted(u, image_d, noise_d_high, logsnr_noisy, logsnr_clean)
    return torch.lerp(low, high, u)


def sigma_from_u(u: torch.Tensor, resolution: int, sigma_min: float = 1e-3, sigma_max: float = 1e3,
                 sigma_data: float = 0.5) -> torch.Tensor:
    """Interpolated-cosine density's quantile function: sigma = sigma_data * exp(-logSNR(u) / 2), decreasing in u.

    u = 0.5 gives sigma = 1.0 at 128 px and 1.41 at 256 px; at 32 px both ends of the interpolation
    coincide and u = 0.5 gives sigma_data. Golden quantiles at 32-1024 px: tests/test_diffusion.py.
    """
    logsnr = logsnr_cosine_interpolated(u.double(), resolution, 32, resolution, sigma_min, sigma_max, sigma_data)
    sigma = sigma_data * torch.exp(-logsnr / 2)
    return sigma.clamp(sigma_min, sigma_max).to(u.dtype)


def sample_sigma(n: int, resolution: int, generator: torch.Generator | None = None, sigma_min: float = 1e-3,
                 sigma_max: float = 1e3, sigma_data: float = 0.5, device=None) -> torch.Tensor:
    """Training noise levels of a global batch of n: interpolated-cosine density with stratified u."""
    u = stratified_uniform(n, generator, device=device)
    return sigma_from_u(u, resolution, sigma_min, sigma_max, sigma_data)
