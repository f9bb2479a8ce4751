"""Which paper rows share one training run.

The paper reports the same model under several names: Table 1 step E is Table 2's "Learnable Linear
Interpolation" and Table 5's "Soft-Min-SNR (gamma = 4)"; Table 5's "SNR" is Table 1 step D. Two rows may
share one training run only if the configs they resolve to under a profile train the same model (equal
`RunConfig.training_key`, equal step count) and sample it the same way. This module decides that from
`resolve(...)`, never from a hand-written list, so a registry or profile change that makes two rows differ splits them again.
"""
from __future__ import annotations

import functools

from hdit.configs import REGISTRY
from hdit.profiles import resolve


def signature(config_id: str, profile: str) -> tuple:
    """What a row's run is: its training identity (`RunConfig.training_key`, the trainer's and the workflow's
    definition too), its step count and its sampler."""
    run = resolve(config_id, profile)
    return run.training_key(), run.train.steps, run.sample


@functools.lru_cache(maxsize=None)
def training_run(config_id: str, profile: str) -> str:
    """The row whose run `config_id` uses: the first registry row with an equal signature."""
    sig = signature(config_id, profile)
    return next(cid for cid in REGISTRY if signature(cid, profile) == sig)


def rows_of_run(run_id: str, profile: str) -> list[str]:
    """Every registry row that shares the training run `run_id` (itself first)."""
    return [cid for cid in REGISTRY if training_run(cid, profile) == run_id]
