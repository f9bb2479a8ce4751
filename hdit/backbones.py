"""The model-family registry: the one layer above HDiT (`hdit.model`) and the baselines (`baselines.dit`,
`baselines.diffit`). The baselines may use HDiT's building blocks; `hdit.model` never imports a baseline, so
the packages form no cycle. A config ID reaches its model in four hops:
`hdit.profiles.resolve(id, profile)` -> `RunConfig.model` -> `build_model` -> the family's class.
"""
from __future__ import annotations

import importlib

from torch import nn

from hdit.configs import FAMILIES, ConfigError, ModelConfig

# family -> (module, class); imported on first use, so `hdit flops --configs E` never loads DiffiT
BACKBONES = {
    "hdit": ("hdit.model.hourglass", "HDiT"),
    "dit": ("baselines.dit", "DiT"),
    "diffit": ("baselines.diffit", "DiffiT"),
}
assert set(BACKBONES) == set(FAMILIES)


def build_model(config: ModelConfig, attn_backend: str = "auto") -> nn.Module:
    """The backbone of `config` (docs/ARCHITECTURE.md "Model contract").

    `attn_backend` selects HDiT's neighborhood-attention kernel ("auto", "masked", "tiled", "natten", "flex";
    see `hdit.model.attention`); the baselines have no such choice.
    """
    if config.family not in BACKBONES:
        raise ConfigError(f"family={config.family!r}; expected one of {FAMILIES}")
    module, name = BACKBONES[config.family]
    cls = getattr(importlib.import_module(module), name)
    return cls(config, attn_backend=attn_backend) if config.family == "hdit" else cls(config)
