"""Which paper rows share one training run.

The paper reports the same model under several names: Table 1 step E is Table 2's "Learnable Linear
Interpolation" and Table 5's "Soft-Min-SNR (gamma = 4)"; Table 5's "SNR" is Table 1 step D. Two rows may
share one training run only if the configs they resolve to under a profile are equal in everything but
their names (`id`, `title`, `table`). This module decides that by comparing `resolve(...)` dicts, never
from a hand-written list, so a registry or profile change that makes two rows differ splits them again.
"""
from __future__ import annotations

import functools

from hdit.configs import REGISTRY
from hdit.profiles import resolve

NAME_FIELDS = ("id", "title", "table")  # what identifies a row, not what it trains


def signature(config_id: str, profile: str) -> dict:
    """The resolved config without the row's names: everything that determines the trained model."""
    d = resolve(config_id, profile).to_dict()
    for k in NAME_FIELDS:
        d.pop(k)
    return d


@functools.lru_cache(maxsize=None)
def training_run(config_id: str, profile: str) -> str:
    """The row whose run `config_id` uses: the first registry row with an equal signature."""
    sig = signature(config_id, profile)
    return next(cid for cid in REGISTRY if signature(cid, profile) == sig)


def rows_of_run(run_id: str, profile: str) -> list[str]:
    """Every registry row that shares the training run `run_id` (itself first)."""
    return [cid for cid in REGISTRY if training_run(cid, profile) == run_id]


def runs(config_ids, profile: str) -> list[str]:
    """The distinct training runs behind `config_ids`, in order."""
    return list(dict.fromkeys(training_run(c, profile) for c in config_ids))
