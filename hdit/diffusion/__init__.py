"""Diffusion: EDM preconditioning, loss weightings, training sigma density (`edm`), Karras schedule,
DPM++(3M) SDE and classifier-free guidance (`sampling`). R1's DDPM lives in `baselines.gaussian_diffusion`."""
from hdit.diffusion.edm import (Denoiser, c_noise, dit_timestep, f_weighting, sample_sigma, scalings,
                                sigma_from_u, stratified_uniform, weighting)
from hdit.diffusion.sampling import cfg_denoiser, karras_sigmas, sample, sample_dpmpp_3m_sde

__all__ = ["Denoiser", "c_noise", "dit_timestep", "f_weighting", "sample_sigma", "scalings", "sigma_from_u",
           "stratified_uniform", "weighting", "cfg_denoiser", "karras_sigmas", "sample", "sample_dpmpp_3m_sde"]
