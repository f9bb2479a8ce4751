"""Tables 1-5 and the DiffiT comparison as DataFrames: measured value, the paper's value, delta, and the
scale it was measured at.

Inputs are the files the workflow writes: annotated metrics JSON (`hdit.report.annotate`) keyed by
paper row, the FLOP counter's JSON (paper scale) and, where the profile's data has known classes, the
class-accuracy JSON of each sample set (`hdit classify`). Paper values come only from `hdit.reference`.
Literature rows of Tables 3 and 4 are cited values and are labelled as such.

Every measured FID and KID is shown with the 95% interval stored beside it in the metrics JSON
(`hdit.metrics`: a bootstrap over the samples for FID, the spread of KID's subsets); where two rows' intervals
overlap, the table's notes say that their difference is not resolved at this scale.
"""
from __future__ import annotations

import math
import re

import pandas as pd

from hdit.configs import TABLE1_ROWS, TABLE_DIFFIT_ROWS, get_config
from hdit.profiles import Profile, get_profile, resolve
from hdit.reference import paper_values
from hdit.report.render import Column, Table
from hdit.report.runs import rows_of_run, training_run
from hdit.report.specs import table_spec

TABLE1_RESOLUTIONS = (128, 256, 512)  # the paper's GFLOP columns
CITED = "cited from the paper"


# ----------------------------------------------------------------------------- helpers

def scale(profile: Profile, config_id: str, n: int | None = None) -> str:
    """Profile.scale_label for a row, with the FID sample count actually used (Table 3 has two)."""
    label = profile.scale_label(get_config(config_id))
    return label if n in (None, profile.fid_samples) else label.replace(profile.fid_label(), profile.fid_label(n))


def table_scale(profile: Profile | str, number: str) -> str:
    """The scale of a whole table, for captions: its rows' Scale labels without what differs between rows (the
    widths of each architecture), e.g. 'default: shapes 32px, 200 steps x batch 32, 25 sampling steps, FID-200'."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    labels = [re.sub(r", widths \[[^\]]*\]", "", scale(profile, s.config, s.count(profile)))
              for s in table_spec(number).scored(profile).values()]
    return "; ".join(dict.fromkeys(labels))


def is_paper_protocol(profile: Profile) -> bool:
    return profile.name == "paper"


def complexity(slope: float) -> str:
    """Big-O in pixel count n from a log-log slope: ~1 -> O(n), ~2 -> O(n^2)."""
    if slope is None or math.isnan(slope):
        return "n/a"
    k = round(slope)
    return "O(1)" if k == 0 else "O(n)" if k == 1 else f"O(n^{k})"


def gflops_slope(g_lo: float, g_hi: float, res_lo: int, res_hi: int) -> float:
    """d log(GFLOPs) / d log(pixel count) between two resolutions."""
    return math.log(g_hi / g_lo) / math.log((res_hi / res_lo) ** 2)


def delta(measured, paper):
    if measured is None or paper is None or (isinstance(measured, float) and math.isnan(measured)):
        return float("nan")
    return float(measured) - float(paper)


def need(metrics: dict, keys) -> None:
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"metrics for {missing} are missing; got {sorted(metrics)}")


def _num(x):
    return float("nan") if x is None else float(x)


def _protocol_note(profile: Profile, paper_protocol: str) -> str:
    if is_paper_protocol(profile):
        return f"Measured under the paper's protocol ({paper_protocol})."
    return (f"Measured values are NOT the paper's protocol: they were measured under profile "
            f"'{profile.name}' at the scale in the Scale column; the paper's values are {paper_protocol}. "
            "The delta compares numbers from different protocols and only shows direction and size.")


def _sharing_note(config_ids, profile: Profile) -> list[str]:
    notes = []
    for run in dict.fromkeys(training_run(c, profile.name) for c in config_ids):
        shared = rows_of_run(run, profile.name)
        if len(shared) > 1:
            notes.append(f"Rows {', '.join(shared)} resolve to equal configs under profile '{profile.name}' "
                         f"(compared with hdit.profiles.resolve) and share one training run ({run}).")
    return notes


def check_current(m: dict, row: str, profile: Profile) -> None:
    """A metrics JSON must come from the config the profile resolves to now (the same training identity,
    `RunConfig.training_key`, and sampler), trained for its steps: the Scale column is derived from the
    profile, so a stale run would be mislabelled."""
    from hdit.configs import RunConfig
    from hdit.rundir import differences

    run = training_run(row, profile.name)
    recorded = m.get("resolved_config")
    if recorded is None:
        return
    current, old = resolve(run, profile.name), RunConfig.from_dict(recorded)
    differ = []
    if old.training_key() != current.training_key() or old.sample != current.sample:
        ours = {**old.training_identity(), "sample": recorded["sample"]}
        theirs = {**current.training_identity(), "sample": current.to_dict()["sample"]}
        differ = [k for k, _, _ in differences(ours, theirs, limit=20)]
    trained = (m.get("train") or {}).get("steps")
    if trained is not None and trained != current.train.steps:
        differ.append(f"steps trained {trained} != {current.train.steps}")
    if differ:
        raise ValueError(f"metrics of row {row} (run {run}) were measured with settings that differ from profile "
                         f"{profile.name!r} now ({', '.join(differ)}); rerun the workflow (delete "
                         f"results/runs/{profile.name}/{run} if training refuses to resume)")


def _interval(m: dict, key: str) -> tuple[float, float]:
    ci = m.get(key)
    return (float("nan"), float("nan")) if not ci else (float(ci[0]), float(ci[1]))


def has_class_accuracy(row: str, profile: Profile) -> bool:
    """Class accuracy needs known classes: class-conditional runs on the embedded shapes data (issue 13)."""
    r = resolve(row, profile.name)
    return r.data.name == "shapes" and r.model.num_classes > 0


def _class_acc_columns(acc: dict | None) -> dict:
    acc = acc or {}
    lo, hi = _interval(acc, "accuracy_ci95")
    return {"class_acc": _num(acc.get("accuracy")), "class_acc_ci_lo": lo, "class_acc_ci_hi": hi,
            "class_acc_n": acc.get("n")}


def _fid_columns(profile: Profile, row: str, m: dict, paper_fid, class_acc: dict | None = None) -> dict:
    check_current(m, row, profile)
    (fid_lo, fid_hi), (kid_lo, kid_hi) = _interval(m, "fid_ci95"), _interval(m, "kid_ci95")
    cols = {"measured_fid": _num(m.get("fid")), "fid_ci_lo": fid_lo, "fid_ci_hi": fid_hi, "paper_fid": _num(paper_fid),
            "delta_fid": delta(m.get("fid"), paper_fid), "measured_kid": _num(m.get("kid")), "kid_ci_lo": kid_lo,
            "kid_ci_hi": kid_hi, "n_samples": m.get("n"), "fid_mode": m.get("fid_mode"),
            "run": m.get("config", training_run(row, profile.name)), "profile": profile.name,
            "scale": scale(profile, row, m.get("n"))}
    if has_class_accuracy(row, profile):
        cols.update(_class_acc_columns(class_acc))
    return cols


FID_DISPLAY = [Column("measured_fid", "FID (measured) [95% CI]", "{:.2f}", ci=("fid_ci_lo", "fid_ci_hi")),
               Column("paper_fid", "FID (paper)", "{:.2f}"), Column("delta_fid", "Δ FID", "{:+.2f}"),
               Column("measured_kid", "KID×10³ [95% CI]", "{:.1f}", ci=("kid_ci_lo", "kid_ci_hi"), factor=1e3)]
CLASS_ACC_DISPLAY = Column("class_acc", "Class acc. [95% CI]", "{:.2f}", ci=("class_acc_ci_lo", "class_acc_ci_hi"))
TAIL_DISPLAY = [Column("run", "Run"), Column("n_samples", "n", "{:d}"), Column("scale", "Scale")]


def _caption(title: str, profile: Profile) -> str:
    where = "paper protocol" if is_paper_protocol(profile) else f"profile '{profile.name}', reduced scale"
    return f"{title} Measured under {where}; paper values beside them."


def fid_display(df: pd.DataFrame) -> list[Column]:
    """The measured-value columns, with Class acc. where the table's rows have it."""
    return FID_DISPLAY + ([CLASS_ACC_DISPLAY] if "class_acc" in df else [])


# ----------------------------------------------------------------------------- notes: intervals, class accuracy

def overlapping(df: pd.DataFrame, lo: str, hi: str) -> list[tuple[str, str]]:
    """Pairs of rows (of different runs) whose intervals [lo, hi] overlap, in table order."""
    measured = df.dropna(subset=[lo, hi]).reset_index(drop=True)
    pairs = []
    for i, a in measured.iterrows():
        for _, b in measured.iloc[i + 1:].iterrows():
            if a["run"] != b["run"] and a[lo] <= b[hi] and b[lo] <= a[hi]:
                pairs.append((a["row"], b["row"]))
    return pairs


def resolution_note(df: pd.DataFrame, metric: str, lo: str, hi: str) -> str | None:
    """Which differences between rows the 95% intervals of `metric` resolve at this scale."""
    if lo not in df or df.dropna(subset=[lo, hi])["run"].nunique() < 2:
        return None
    pairs = overlapping(df, lo, hi)
    if not pairs:
        return f"{metric}: the 95% intervals of all rows are disjoint; every difference between rows is resolved."
    by_first: dict[str, list[str]] = {}
    for a, b in pairs:
        by_first.setdefault(a, []).append(b)
    listed = "; ".join(f"{a} ~ {', '.join(bs)}" for a, bs in by_first.items())
    return (f"{metric}: the differences between these rows are NOT resolved at this scale (their 95% intervals "
            f"overlap): {listed}.")


def interval_notes(df: pd.DataFrame) -> list[str]:
    if "fid_ci_lo" not in df or df.fid_ci_lo.isna().all():
        return []
    notes = ["[95% CI]: FID from a bootstrap over the scored samples (their Inception features resampled with "
             "replacement, FID recomputed; seeded), KID from the spread of its random subsets, or from the same "
             "bootstrap where every subset would be the whole sample set (n <= 1000). They cover the "
             "sampling noise of the score only: another training run of the same row (other seed or machine) "
             "can move it further."]
    return notes + [n for n in (resolution_note(df, "FID", "fid_ci_lo", "fid_ci_hi"),
                                resolution_note(df, "KID", "kid_ci_lo", "kid_ci_hi")) if n]


def class_acc_notes(df: pd.DataFrame, class_acc: dict[str, dict] | None) -> list[str]:
    if "class_acc" not in df:
        return []
    found = [a for a in (class_acc or {}).values() if a and a.get("accuracy") is not None]
    if not found:
        return ["Class acc. is blank: no class-accuracy JSON (`hdit classify`) was given for these runs."]
    clf = found[0].get("classifier") or {}
    test = clf.get("test_accuracy")
    return [f"Class acc.: the fraction of a row's samples that a classifier trained on the shapes training split "
            f"({'test accuracy ' + format(test, '.3f') + ', ' if test is not None else ''}chance "
            f"{found[0].get('chance', float('nan')):.2f}) assigns to their conditioning class; 95% interval beside it."]


# ----------------------------------------------------------------------------- Tables 1, 2, 5

def table1(metrics: dict[str, dict], flops: list[dict], profile: Profile | str,
           class_acc: dict[str, dict] | None = None) -> Table:
    """Table 1: FID and GFLOPs (128/256/512, paper scale) of the ablation rows R1-R4, A-E."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    paper = paper_values()["table1"]
    need(metrics, TABLE1_ROWS)
    counted = {(f["config"], int(f["resolution"])): f for f in flops if f.get("profile", "paper") == "paper"}
    rows = []
    for row in TABLE1_ROWS:
        missing = [r for r in TABLE1_RESOLUTIONS if (row, r) not in counted]
        if missing:
            raise ValueError(f"FLOP counts for {row} at {missing} are missing from the FLOP JSON")
        g = {r: float(counted[row, r]["gflops"]) for r in TABLE1_RESOLUTIONS}
        slope = gflops_slope(g[256], g[512], 256, 512)
        p = paper[row]
        rows.append({"row": row, "title": p["title"],
                     **_fid_columns(profile, row, metrics[row], p["fid"], (class_acc or {}).get(row)),
                     **{f"gflops_{r}": g[r] for r in TABLE1_RESOLUTIONS},
                     **{f"paper_gflops_{r}": _num(p[f"gflops_{r}"]) for r in TABLE1_RESOLUTIONS},
                     "complexity": complexity(slope), "complexity_slope": slope,
                     "paper_complexity": p["complexity"], "params_128": counted[row, 128].get("params")})
    df = pd.DataFrame(rows)
    display = [Column("row", "Row"), Column("title", "Configuration"), *fid_display(df),
               *[Column(f"gflops_{r}", f"GFLOP@{r}", "{:.2f}") for r in TABLE1_RESOLUTIONS],
               *[Column(f"paper_gflops_{r}", f"paper GFLOP@{r}", "{:.0f}") for r in TABLE1_RESOLUTIONS],
               Column("complexity", "Complexity"), Column("complexity_slope", "slope", "{:.2f}"),
               Column("paper_complexity", "paper Complexity"), *TAIL_DISPLAY]
    notes = [_protocol_note(profile, "FID-50k on ImageNet-128 after 400k steps at batch 256"),
             "GFLOPs are counted by `hdit flops` (fvcore, 1 FLOP = 1 multiply-accumulate, forward pass, batch 1) "
             "on the paper-scale architectures, whatever the profile; 256/512 use the paper's resolution "
             "adaptation (one new outer level per doubling).",
             "Complexity is derived from the counted GFLOPs: slope = d log(GFLOPs) / d log(pixel count) "
             "between 256 and 512 px, rounded to O(n^k).",
             *_sharing_note(TABLE1_ROWS, profile), *interval_notes(df), *class_acc_notes(df, class_acc)]
    return Table("table1", _caption(table_spec("1").title, profile), df, display, notes)


def _fid_table(number: str, section: str, metrics: dict, profile: Profile | str,
               class_acc: dict[str, dict] | None = None) -> Table:
    profile = get_profile(profile) if isinstance(profile, str) else profile
    spec, paper = table_spec(number), paper_values()[section]
    ids = list(spec.scored(profile))
    need(metrics, ids)
    df = pd.DataFrame([{"row": r, "title": paper[r]["title"],
                        **_fid_columns(profile, r, metrics[r], paper[r]["fid"], (class_acc or {}).get(r))}
                       for r in ids])
    display = [Column("row", "Row"), Column("title", "Configuration"), *fid_display(df), *TAIL_DISPLAY]
    notes = [_protocol_note(profile, "FID-50k on ImageNet-128 after 400k steps at batch 256"),
             *_sharing_note(ids, profile), *interval_notes(df), *class_acc_notes(df, class_acc)]
    return Table(spec.name, _caption(spec.title, profile), df, display, notes)


def table2(metrics: dict[str, dict], profile: Profile | str, class_acc: dict[str, dict] | None = None) -> Table:
    return _fid_table("2", "table2", metrics, profile, class_acc)


def table5(metrics: dict[str, dict], profile: Profile | str, class_acc: dict[str, dict] | None = None) -> Table:
    return _fid_table("5", "table5", metrics, profile, class_acc)


# ----------------------------------------------------------------------------- Tables 3, 4

def _cited(r: dict, extra: dict) -> dict:
    return {"row": r["method"], "group": r["group"], "source": CITED, "measured_fid": float("nan"),
            "fid_ci_lo": float("nan"), "fid_ci_hi": float("nan"), "paper_fid": _num(r["fid"]),
            "delta_fid": float("nan"), "measured_kid": float("nan"), "kid_ci_lo": float("nan"),
            "kid_ci_hi": float("nan"), "run": None, "profile": None,
            "scale": f"{CITED} (paper protocol, FID-{r.get('n_samples', 50000) // 1000}k)", **extra}


def table3(metrics: dict[str, dict], profile: Profile | str, class_acc: dict[str, dict] | None = None) -> Table:
    """Table 3, FFHQ-1024. `metrics` has keys 'small' (fid_samples_ffhq_small) and 'full' (fid_samples)."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    small_n_paper = get_profile("paper").fid_samples_ffhq_small
    need(metrics, ("small", "full"))
    rows = []
    for r in paper_values()["table3"]["rows"]:
        if not r["ours"]:
            rows.append(_cited(r, {"paper_n": r["n_samples"], "n_samples": None}))
            continue
        m = metrics["small" if r["n_samples"] == small_n_paper else "full"]
        rows.append({"row": r["method"], "group": r["group"], "source": "measured", "paper_n": r["n_samples"],
                     **_fid_columns(profile, r["config"], m, r["fid"])})
    df = pd.DataFrame(rows)[["row", "group", "source", "measured_fid", "fid_ci_lo", "fid_ci_hi", "paper_fid",
                            "delta_fid", "measured_kid", "kid_ci_lo", "kid_ci_hi", "n_samples", "paper_n", "fid_mode",
                            "run", "profile", "scale"]]
    display = [Column("row", "Method"), Column("group", "Group"), *fid_display(df), Column("n_samples", "n", "{:.0f}"),
               Column("paper_n", "paper n", "{:d}"), Column("scale", "Scale")]
    notes = [_protocol_note(profile, "FID on FFHQ-1024 after 1M steps (HDiT-85M)"),
             "Literature rows are cited from the paper (not measured here).",
             f"Our two rows score the same run's sample set of {profile.fid_samples} images (profile "
             f"'{profile.name}'): all of it, and its first {profile.fid_samples_ffhq_small}, like the paper's 50k and "
             "5k rows.",
             *interval_notes(df)]
    return Table("table3", _caption(table_spec("3").title, profile), df, display, notes)


def _millions(n) -> str | None:
    if n is None:
        return None
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def table4(metrics: dict, profile: Profile | str, class_acc: dict | None = None) -> Table:
    """Table 4, ImageNet-256 without CFG: FID, IS, params, samples seen, sampling steps."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    rows = []
    for r in paper_values()["table4"]["rows"]:
        paper = {"paper_is": _num(r["is"]), "paper_params": r["params"], "paper_samples_seen": r["samples_seen"],
                 "paper_steps": r["steps"]}
        if not r["ours"]:
            rows.append(_cited(r, {**paper, "measured_is": float("nan"), "delta_is": float("nan")}))
            continue
        m = metrics
        train, sample = m.get("train", {}), m.get("sample", {})
        seen = train["steps"] * train["batch_size"] if train.get("steps") and train.get("batch_size") else None
        rows.append({"row": r["method"], "group": r["group"], "source": "measured",
                     **_fid_columns(profile, r["config"], m, r["fid"], class_acc),
                     "measured_is": _num(m.get("is_mean")),
                     "delta_is": delta(m.get("is_mean"), r["is"]), **paper,
                     "measured_params": train.get("params"), "measured_params_str": _millions(train.get("params")),
                     "measured_samples_seen": seen, "measured_samples_seen_str": _millions(seen),
                     "measured_steps": sample.get("steps"), "cfg_scale": sample.get("cfg_scale")})
    df = pd.DataFrame(rows)
    display = [Column("row", "Method"), Column("group", "Group"), *fid_display(df),
               Column("measured_is", "IS (measured)", "{:.2f}"), Column("paper_is", "IS (paper)", "{:.1f}"),
               Column("measured_params_str", "Params"), Column("paper_params", "paper Params"),
               Column("measured_samples_seen_str", "Samples seen"),
               Column("paper_samples_seen", "paper Samples seen"), Column("measured_steps", "Steps", "{:.0f}"),
               Column("paper_steps", "paper Steps"), Column("scale", "Scale")]
    notes = [_protocol_note(profile, "FID@50k and IS@50k on ImageNet-256 without CFG (HDiT-557M, 2.2M steps)"),
             "Literature rows are cited from the paper (not measured here).",
             "Our row: params of the model as trained under the profile; samples seen = training steps x batch "
             "size; steps = sampler steps, no classifier-free guidance (w = 1).", *interval_notes(df),
             *class_acc_notes(df, {"ours": class_acc} if class_acc else None)]
    return Table("table4", _caption(table_spec("4").title, profile), df, display, notes)


# ----------------------------------------------------------------------------- DiffiT beside E and DiT-B/4

BACKBONES = {"hdit": "HDiT", "dit": "DiT-B/4", "diffit": "DiffiT (image space)"}
DIFFIT_PAPER_RES = 128  # Table 1's resolution: the paper-scale GFLOP column


def _counted(flops: list[dict], row: str, resolution: int, profile: str) -> dict:
    for f in flops:
        if (f["config"], int(f["resolution"]), f.get("profile", "paper")) == (row, resolution, profile):
            return f
    raise ValueError(f"FLOP count of {row} at {resolution} px under profile {profile!r} is missing from the FLOP "
                     f"JSON (`hdit flops --configs {row} --resolutions {resolution} --profile {profile}`)")


def _diffit_row(row: str, m: dict, flops: list[dict], profile: Profile, class_acc: dict | None = None) -> dict:
    run, paper = resolve(row, profile.name), paper_values()["table1"].get(row, {})
    trained = _counted(flops, row, run.model.resolution, profile.name)
    at_paper = _counted(flops, row, DIFFIT_PAPER_RES, "paper")
    train = m.get("train") or {}
    steps, batch = train.get("steps"), train.get("batch_size")
    compute = 3 * trained["gflops"] * steps * batch / 1e3 if steps and batch else float("nan")
    return {"row": row, "backbone": BACKBONES[run.model.family], "title": get_config(row).title,
            **_fid_columns(profile, row, m, paper.get("fid"), class_acc),
            "params_trained": train.get("params", trained["params"]), "gflops_trained": trained["gflops"],
            "train_tmac": compute, "train_wall_s": _num(train.get("wall_time_s")), "train_device": train.get("device"),
            "weighting": run.train.weighting, f"gflops_{DIFFIT_PAPER_RES}": at_paper["gflops"],
            f"params_{DIFFIT_PAPER_RES}": at_paper["params"],
            f"paper_gflops_{DIFFIT_PAPER_RES}": _num(paper.get(f"gflops_{DIFFIT_PAPER_RES}"))}


def table_diffit(metrics: dict[str, dict], flops: list[dict], profile: Profile | str,
                 class_acc: dict[str, dict] | None = None) -> Table:
    """DiffiT (image space) beside HDiT step E and DiT-B/4 (R2), trained by the same harness under one profile.

    `flops` holds two sets of counts: each row's backbone as the profile trains it (at its training
    resolution) and the paper-scale one at 128 px (`hdit flops --profile ...`)."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    need(metrics, TABLE_DIFFIT_ROWS)
    df = pd.DataFrame([_diffit_row(r, metrics[r], flops, profile, (class_acc or {}).get(r)) for r in TABLE_DIFFIT_ROWS])
    res = DIFFIT_PAPER_RES
    display = [Column("row", "Row"), Column("backbone", "Backbone"), *fid_display(df),
               Column("params_trained", "Params (trained)", "{:,d}"),
               Column("gflops_trained", "GFLOP (trained)", "{:.3f}"),
               Column("train_tmac", "Train TMAC", "{:.1f}"), Column("train_wall_s", "Train wall (s)", "{:.0f}"),
               Column(f"gflops_{res}", f"GFLOP@{res} (paper scale)", "{:.2f}"),
               Column(f"params_{res}", f"Params@{res} (paper scale)", "{:,d}"), *TAIL_DISPLAY]
    notes = [_protocol_note(profile, "Table 1's FID-50k on ImageNet-128 after 400k steps at batch 256 (E, R2); "
                                     "the DiffiT paper reports no number in this setting"),
             "Matched compute: the three backbones train for the same steps x batch with the same EDM trainer "
             "(preconditioning, interpolated-cosine sigma density, class dropout 0.1), sample with the same "
             "DPM++(3M) SDE steps and are scored by the same FID protocol; only the per-forward cost differs, "
             "shown in GFLOP (trained).",
             "E and DiffiT share E's training recipe (soft-min-SNR, gamma 4), so they differ only in the backbone; "
             "R2 is Table 1's DiT-B/4 in the same trainer, with SNR weighting and DiT's optimiser (paper footnote 3).",
             "GFLOPs: `hdit flops` (fvcore, 1 FLOP = 1 multiply-accumulate, forward, batch 1, attention included). "
             f"GFLOP (trained): the backbone the profile trains, at its training resolution; GFLOP@{res}: the "
             f"paper-scale backbone at {res} px (DiffiT: the FFHQ-64 layout with L = 4, class-conditional). "
             "Train TMAC ~ 3 x GFLOP (trained) x steps x batch (backward ~ 2 forwards).",
             "Train wall: seconds of the training job on its device (train_device in the CSV), with whatever else "
             "ran on the machine at the time; compare it across rows of one workflow run only.",
             *_sharing_note(TABLE_DIFFIT_ROWS, profile), *interval_notes(df), *class_acc_notes(df, class_acc)]
    return Table("table_diffit", _caption("DiffiT (image space) beside HDiT (step E) and DiT-B/4 at matched "
                                          "training compute.", profile), df, display, notes)


# ----------------------------------------------------------------------------- one entry point per table number

def build(number: str, metrics: dict[str, dict], profile: Profile | str, flops: list[dict] | None = None,
          class_acc: dict[str, dict] | None = None) -> Table:
    """Table `number` from its metrics (keyed as in `hdit.report.specs`), FLOP counts (Table 1) and class
    accuracies (keyed like the metrics; missing keys are blank)."""
    spec = table_spec(number)
    if spec.flops and flops is None:
        raise ValueError(f"table {number} needs --flops FILE ... (the FLOP counter's JSON of "
                         f"{', '.join(spec.flops)})")
    if number == "1":
        return table1(metrics, flops, profile, class_acc)
    if number == "4":
        key = next(iter(spec.scored(profile)))
        need(metrics, [key])
        return table4(metrics[key], profile, (class_acc or {}).get(key))
    if number == "diffit":
        return table_diffit(metrics, flops, profile, class_acc)
    return {"2": table2, "3": table3, "5": table5}[number](metrics, profile, class_acc)
