"""Baselines of the HDiT paper: DiT-B/4 (rows R1, R2) and its Gaussian diffusion (R1)."""
