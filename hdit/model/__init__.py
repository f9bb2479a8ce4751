"""Model families: HDiT (`hdit.model.hourglass`), the DiT-B/4 baseline (`baselines.dit`) and image-space
DiffiT (`baselines.diffit`)."""
from __future__ import annotations

from torch import nn

from hdit.configs import FAMILIES, ConfigError, ModelConfig


def build_model(cfg: ModelConfig, attn_backend: str = "auto") -> nn.Module:
    """The backbone of `cfg` (docs/ARCHITECTURE.md "Model contract").

    `attn_backend` selects the neighborhood-attention kernel of HDiT ("auto", "masked", "natten", "flex";
    see `hdit.model.attention`); DiT and DiffiT ignore it.
    """
    if cfg.family == "hdit":
        from hdit.model.hourglass import HDiT

        return HDiT(cfg, attn_backend=attn_backend)
    if cfg.family == "dit":
        from baselines.dit import DiT

        return DiT(cfg)
    if cfg.family == "diffit":
        from baselines.diffit import DiffiT

        return DiffiT(cfg)
    raise ConfigError(f"family={cfg.family!r}; expected one of {FAMILIES}")


__all__ = ["build_model"]
