"""Exponential moving average of the weights with a warm-up (k-diffusion's EMAWarmup form).

decay(t) = min(ema_decay, 1 - (1 + t / gamma) ** -power), t = optimiser steps taken before this update,
so the first update copies the weights (decay 0) and the decay approaches ema_decay (0.9999, Table 6)
as training goes on: with the TrainConfig defaults (gamma 1, power 2/3) decay(t) ~ 1 - t^(-2/3), which
reaches 0.999 at t ~ 3.2e4 and 0.9999 at t = 1e6. Buffers are copied, not averaged.
"""
from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, max_decay: float = 0.9999, power: float = 2 / 3, gamma: float = 1.0) -> float:
    """The EMA decay used for the update after `step` optimiser steps (0-indexed)."""
    if step < 0:
        return 0.0
    return min(max_decay, 1 - (1 + step / gamma) ** -power)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema_p <- decay * ema_p + (1 - decay) * p for parameters (one foreach lerp); ema_b <- b for buffers.

    `ema` is a deep copy of `model`, so parameters and buffers line up in registration order.
    """
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"EMA model has {len(ema_params)} parameters, model {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
