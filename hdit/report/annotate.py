"""One metrics JSON per scored sample set, with the provenance every table row needs.

`hdit fid` writes the scores (fid and kid with their 95% intervals, IS, n, mode, extractor hash); this adds what produced the
samples: the training run (config ID, rows sharing it, profile, steps, batch, seed, params, wall time,
device), the sampler (sampler, steps, CFG scale, seed, n, device), for both the precision that ran and whether
the model was compiled, versions, and the resolved config, read from the run directory (config.json, done.json)
and the sample directory's meta.json.
"""
from __future__ import annotations

from pathlib import Path

from hdit.configs import RunConfig
from hdit.integrity import read_record
from hdit.profiles import get_profile
from hdit.provenance import versions
from hdit.report.runs import rows_of_run
from hdit.report.tables import scale

SAMPLE_KEYS = ("sampler", "steps", "cfg_scale", "seed", "n", "eta", "rho", "batch_size", "weights",
               "checkpoint_step", "precision", "compile")
SCORE_KEYS = ("fid", "fid_ci95", "fid_bootstrap", "kid", "kid_ci95", "kid_interval", "kid_std",
              "is_mean", "is_std", "is_unavailable",
              "n", "label", "extractor_sha256", "ref_n", "ref_content_sha256")


def _load(path: Path) -> dict:
    if not Path(path).exists():
        raise ValueError(f"{str(path)!r} does not exist")
    return read_record(path, "delete it and rerun the job that wrote it (`hdit fid --out` / `hdit sample`)")


def _device(record: dict) -> str | None:
    return (record.get("provenance") or {}).get("device")


def count_params(resolved: dict) -> int:
    """Parameters of the model as trained (built on the meta device: no memory, no initialisation)."""
    import torch

    from hdit.backbones import build_model

    with torch.device("meta"):
        model = build_model(RunConfig.from_dict(resolved).model)
    return sum(p.numel() for p in model.parameters())


def annotate(fid: dict, sample_dir: str | Path, run_dir: str | Path, profile: str) -> dict:
    sample_dir, run_dir = Path(sample_dir), Path(run_dir)
    meta = _load(sample_dir / "meta.json")
    config_json = _load(run_dir / "config.json")
    done = _load(run_dir / "done.json")
    resolved = config_json["config"]
    run_id = resolved["id"]
    if config_json.get("profile") != profile:
        raise ValueError(f"run {str(run_dir)!r} was trained under profile {config_json.get('profile')!r}, "
                         f"not {profile!r}")
    t = resolved["train"]
    prof = get_profile(profile)
    return {
        "config": run_id,
        "rows": rows_of_run(run_id, profile),
        "profile": profile,
        "scale": scale(prof, run_id, fid.get("n")),
        **{k: fid.get(k) for k in SCORE_KEYS},
        "fid_mode": fid.get("mode"),
        "train": {"steps": done["step"], "batch_size": t["batch_size"], "seed": config_json.get("seed", t["seed"]),
                  "lr": t["lr"], "weighting": t["weighting"], "gamma": t["gamma"], "objective": t["objective"],
                  "params": done.get("params") or count_params(resolved), "world_size": done.get("world_size"),
                  "wall_time_s": done.get("wall_time_s"), "device": _device(done),
                  # what ran (bf16-autocast | fp32) and whether it was compiled; None in runs recorded before both
                  "precision": config_json.get("precision"), "compile": config_json.get("compile")},
        "sample": {**{k: meta.get(k) for k in SAMPLE_KEYS}, "device": _device(meta)},
        "fid_device": _device(fid),
        "versions": versions(),
        "paths": {"run": str(run_dir), "samples": str(sample_dir), "ref": fid.get("ref_dir")},
        "resolved_config": resolved,
        "fid_json": fid,
    }
