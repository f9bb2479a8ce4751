"""What makes two runs the same run: one definition, used by the workflow, the reports and (see below) the trainer.

A resolved config (`hdit.profiles.resolve`, a `RunConfig` or its JSON dict) has names (`id`, `title`, `table`)
and four parts. The weights of a training run are a function of three of them, `model`, `train` and `data`
(the training identity); a scored sample set also depends on `sample` (the evaluation identity). So:

- the workflow keys a training job by `training_key` (a `params` value: a change reruns, resumes or extends it);
- two paper rows share one training run and one sample set when their evaluation identities are equal
  (`hdit.report.runs`);
- a table refuses a metrics JSON whose recorded config differs from the current one (`differences`).

The trainer (`hdit train`, refusing a run dir started with other settings) compares the whole dict except
`train.steps` today; `differences(stored, current, TRAINED, ignore=("train.steps",))` is the same test on the
training identity alone.
"""
from __future__ import annotations

import hashlib
import json

TRAINED = ("model", "train", "data")  # what the trained weights are a function of
EVALUATED = TRAINED + ("sample",)  # ... and what a scored sample set also depends on


def _as_dict(config) -> dict:
    return config if isinstance(config, dict) else config.to_dict()


def identity(config, parts=EVALUATED) -> dict:
    """The parts of a resolved config (RunConfig or its JSON dict) that decide a run; names left out."""
    d = _as_dict(config)
    return {p: d[p] for p in parts}


def training_identity(config) -> dict:
    return identity(config, TRAINED)


def training_key(config) -> str:
    """A short, stable hash of the training identity (sha256 of its sorted JSON, 16 hex digits)."""
    blob = json.dumps(training_identity(config), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def differences(recorded, current, parts=EVALUATED, ignore=()) -> list[str]:
    """`part.key` of every setting in which two resolved configs differ (sorted), `ignore` left out."""
    a, b = _as_dict(recorded), _as_dict(current)
    out = []
    for p in parts:
        keys = set(a.get(p, {})) | set(b.get(p, {}))
        out += [f"{p}.{k}" for k in keys if a.get(p, {}).get(k) != b.get(p, {}).get(k)]
    return sorted(k for k in out if k not in ignore)
