"""Reading a run directory back (`hdit train --resume`, `hdit sample`): config.json, done.json, the checkpoint
and the sampling weights, each checked (`hdit.integrity`), and the weights checked against config.json.

`hdit train` writes the EMA weights twice at every checkpoint: inside checkpoint.pt (resume state: model, EMA,
optimiser, RNG, 4x the parameters) and alone in ema.pt, first. Sampling reads only ema.pt, so it verifies and
loads a quarter of the bytes (2.4 GB instead of 9.6 GB for ImageNet-256's 598M-parameter model).

The checkpoint carries its own RunConfig (seed included) and profile. Two writers of one run directory (now
prevented by `hdit.runlock`), or a file copied from another run, could leave config.json describing one run
and the weights another; resume and sampling refuse such a pair, naming both values.

Guards and repairs `hdit train` calls (issue 25): weights are checkpointed only when finite (model and EMA), so
the checkpoint a diverged run leaves is the last finite one; a run is never resumed to fewer steps than its
checkpoint holds; a finished run whose config.json or ema.pt was removed or damaged gets them back from its
intact checkpoint on `hdit train --resume`, which is what the error messages advise.
"""
from __future__ import annotations

from pathlib import Path

from hdit.errors import HarnessError
from hdit.integrity import damaged, load_torch, load_torch_verified, read_record

CONFIG, CHECKPOINT, DONE, EMA = "config.json", "checkpoint.pt", "done.json", "ema.pt"
CHECKPOINT_KEYS = ("model", "ema", "step")
EMA_KEYS = ("ema", "step")


class RunMismatchError(HarnessError):
    """config.json and checkpoint.pt describe different runs."""


def config_fix(run_dir) -> str:
    return (f"if {Path(run_dir) / CHECKPOINT} is intact, remove the damaged file and run `hdit train --resume` "
            "with the run's --config/--profile/--seed: it is rewritten (the checkpoint's own settings are checked "
            "against the command line); otherwise train again in a new --out")


def done_fix(run_dir) -> str:
    return (f"remove it and run `hdit train --resume` with the run's settings: the checkpoint in {run_dir} is "
            "kept and done.json is written again")


def checkpoint_fix(run_dir, file: str = CHECKPOINT) -> str:
    return (f"the weights cannot be trusted: restore {Path(run_dir) / file} (and its .sha256) from a backup, "
            "or remove the run directory and train again")


def read_config(run_dir) -> dict:
    """config.json of a run, checked (its checksum, and that it holds a config and a profile)."""
    path = Path(run_dir) / CONFIG
    record = read_record(path, config_fix(run_dir))
    if not isinstance(record.get("config"), dict) or "profile" not in record:
        raise damaged(path, "lacks the `config` / `profile` entries `hdit train` writes", config_fix(run_dir))
    return record


def read_done(run_dir) -> dict:
    return read_record(Path(run_dir) / DONE, done_fix(run_dir))


def load_checkpoint(run_dir, **load_kw) -> dict:
    """checkpoint.pt of a run, checked (checksum, format, the entries `hdit train` writes)."""
    return load_torch(Path(run_dir) / CHECKPOINT, checkpoint_fix(run_dir), CHECKPOINT_KEYS, **load_kw)


def comparable(d: dict) -> dict:
    """The training identity of a stored RunConfig dict (`RunConfig.training_identity`: the one definition of
    "the same run" that the trainer, the workflow and the reports use)."""
    from hdit.configs import RunConfig

    return RunConfig.from_dict(d).training_identity()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def differences(ours: dict, theirs: dict, limit: int = 6) -> list[tuple[str, object, object]]:
    """(dotted key, ours, theirs) for every differing entry of two nested dicts (at most `limit`)."""
    a, b = _flatten(ours), _flatten(theirs)
    keys = sorted(set(a) | set(b), key=lambda k: (k.split(".")[-1] not in ("id", "seed"), k))
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)][:limit]


def sampling_weights(run_dir) -> Path | None:
    """ema.pt, or checkpoint.pt for a run written before ema.pt existed; None if the run has neither."""
    return next((Path(run_dir) / f for f in (EMA, CHECKPOINT) if (Path(run_dir) / f).is_file()), None)


def ema_fix(run_dir) -> str:
    return (f"if {Path(run_dir) / CHECKPOINT} is intact it holds the same EMA weights: run `hdit train --resume` with "
            "the run's --config/--profile/--seed (and --steps), which rewrites ema.pt from it; otherwise "
            + checkpoint_fix(run_dir, EMA).split(": ", 1)[1])


def load_sampling_weights(run_dir, **load_kw) -> tuple[str, dict, str]:
    """(file name, its record, the file's verified sha256) of the EMA weights `hdit sample` uses: {"ema", "step",
    "config", "profile"} from ema.pt, or the checkpoint of an older run without one."""
    path = sampling_weights(run_dir)
    if path is None or path.name == CHECKPOINT:
        path, fix, keys = Path(run_dir) / CHECKPOINT, checkpoint_fix(run_dir), CHECKPOINT_KEYS
    else:
        fix, keys = ema_fix(run_dir), EMA_KEYS
    return (path.name, *load_torch_verified(path, fix, keys, **load_kw))


# ----------------------------------------------------------------------------- repairs and guards used by `hdit train`

class NonFiniteWeightsError(HarnessError):
    """Weights with NaN/inf at a checkpoint: they are not written."""


def check_finite_weights(run_dir, step: int, **state_dicts) -> None:
    """Refuse to checkpoint non-finite weights (e.g. model=..., ema=...): the last finite checkpoint stays and
    the message says which step it is."""
    import torch

    bad = {name: [k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point()
                  and not bool(torch.isfinite(v).all())] for name, sd in state_dicts.items()}
    bad = {name: keys for name, keys in bad.items() if keys}
    if not bad:
        return
    what = "; ".join(f"{name}: {len(keys)} of {len(state_dicts[name])} tensors ({', '.join(keys[:2])}"
                     f"{', ...' if len(keys) > 2 else ''})" for name, keys in bad.items())
    kept = last_checkpoint_step(run_dir)
    where = (f"the last finite checkpoint, step {kept}, is kept in {Path(run_dir) / CHECKPOINT}" if kept is not None
             else "no checkpoint was written before")
    raise NonFiniteWeightsError(f"training diverged: the weights hold NaN/inf at step {step} ({what}); they were not "
                                f"saved, {where}. Lower the learning rate (or check log.csv for the loss) and train "
                                "again in a new --out, or resume from that checkpoint with other settings")


def last_checkpoint_step(run_dir) -> int | None:
    """The step of the checkpoint in `run_dir` (None: none, or unreadable)."""
    import torch

    path = Path(run_dir) / CHECKPOINT
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"])
    except Exception:  # only used in a message: an unreadable checkpoint is reported when it is read
        return None


def check_resume_steps(run_dir, ckpt_step: int, steps: int) -> None:
    """A run is never shortened below its checkpoint: config.json would record fewer steps than were trained."""
    if ckpt_step > steps:
        raise HarnessError(f"{Path(run_dir) / CHECKPOINT} is at step {ckpt_step}, beyond --steps {steps}: a run "
                           f"cannot be shortened to fewer steps than it has trained; resume with --steps {ckpt_step} "
                           "or more (or train the shorter run in a new --out)")


def restore_from_checkpoint(run_dir, ckpt: dict) -> list[str]:
    """A finished run whose config.json or ema.pt was removed or damaged: rewrite them from the intact checkpoint
    (its own config, profile and EMA weights, all checked against the command line by the caller). Returns the
    names rewritten."""
    import warnings

    from hdit.integrity import DamagedFileError, write_record
    from hdit.io import torch_save

    run_dir, restored = Path(run_dir), []
    identity = {"step": ckpt["step"], "config": ckpt["config"], "profile": ckpt["profile"]}
    if not (run_dir / CONFIG).is_file():
        write_record(run_dir / CONFIG, {"config": ckpt["config"], "config_id": ckpt["config"].get("id"),
                                        "profile": ckpt["profile"], "seed": ckpt["config"]["train"]["seed"],
                                        "world_size": ckpt.get("world_size"),
                                        "restored_from": f"{CHECKPOINT} (step {ckpt['step']})"})
        restored.append(CONFIG)
    try:
        ok = int(load_torch(run_dir / EMA, ema_fix(run_dir), EMA_KEYS, mmap=True)["step"]) == ckpt["step"]
    except (DamagedFileError, FileNotFoundError):
        ok = False
    if not ok:
        torch_save({"ema": ckpt["ema"], **identity}, run_dir / EMA)
        restored.append(EMA)
    if restored:
        warnings.warn(f"{run_dir}: rewrote {' and '.join(restored)} from {CHECKPOINT} (step {ckpt['step']})",
                      stacklevel=2)
    return restored


def check_checkpoint(ckpt: dict, config: dict, profile: str, run_dir, against: str = CONFIG,
                     file: str = CHECKPOINT) -> None:
    """The checkpoint's own config (seed included, step count excluded) and profile must equal `config` /
    `profile` (config.json's, or the command line's: `against` names which)."""
    if "config" not in ckpt or "profile" not in ckpt:
        return  # written before checkpoints carried their settings: nothing to compare
    diff = differences({"profile": ckpt["profile"], **comparable(ckpt["config"])},
                       {"profile": profile, **comparable(config)})
    if diff:
        both = "; ".join(f"{k}: {theirs!r} in {against} but {ours!r} in {file}" for k, ours, theirs in diff)
        raise RunMismatchError(f"{Path(run_dir)}: {file} was written by another run than {against} describes "
                               f"({both}); the directory mixes two runs (two trainers, or a copied file): "
                               "train again in a new --out, or restore the matching pair")
