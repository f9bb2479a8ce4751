"""Measured scaling figure: forward wall-clock and peak memory vs resolution, HDiT vs DiT-B/4.

The measured counterpart of the paper's Figure 2 (FLOPs vs resolution): `hdit bench` scaling records
(suite "scaling") give latency per image and peak memory per resolution; the FLOP curve of Figure 2
(results/figures/fig2.csv: config, resolution, gflops) is drawn beside them, and the DiT / HDiT ratio of
both is plotted together (issue goals: wall-clock ratio >= 3 at 128 px and >= 20 at 512 px on a GPU).
Every curve is labelled with the device and torch version it was measured on; CPU-only data says so.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from hdit.report.figures import save  # noqa: E402

GOALS = {128: 3.0, 512: 20.0}  # the wall-clock goals DiT-B/4 / HDiT E on one H100 (docs/PERFORMANCE.md)
KEYS = ["device", "device_type", "torch", "scale", "precision", "compile", "family", "config", "resolution", "batch"]


def _family(config_id: str) -> str:
    """'hdit' or 'dit' for a registry ID (R1 in fig2.csv and R2 in the bench are both DiT-B/4)."""
    from hdit.configs import REGISTRY

    run = REGISTRY.get(config_id)
    if run is not None:
        return run.model.family
    return "dit" if "dit" in config_id.lower() and "hdit" not in config_id.lower() else "hdit"


FAMILY_LABEL = {"hdit": "HDiT", "dit": "DiT-B/4"}


def load_scaling(bench_jsons) -> pd.DataFrame:
    """One row per (device, model, resolution) scaling measurement: fwd_ms, ms per image, peak_mem_gib."""
    rows = []
    for path in bench_jsons:
        try:
            records = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); restore it (git checkout) or re-measure with "
                             "`hdit bench`") from None
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of bench records, got {type(records).__name__}")
        rows += [dict(r, source=str(path)) for r in records if r.get("suite") == "scaling"]
    if not rows:
        raise ValueError(f"no scaling records (suite 'scaling') in {[str(p) for p in bench_jsons]}; "
                         "run `hdit bench --suites scaling ...` first")
    df = pd.DataFrame(rows)
    df = df[df.value.notna()].copy()
    df["family"] = df.config.map(_family)
    wide = df.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="last").reset_index()
    wide.columns.name = None
    if "mem_kind" in df:
        kinds = df[df.metric == "peak_mem_gib"].groupby(KEYS, dropna=False).mem_kind.last().rename("mem_kind")
        wide = wide.merge(kinds.reset_index(), on=KEYS, how="left")
    else:
        wide["mem_kind"] = None
    for col in ("fwd_ms", "peak_mem_gib"):
        if col not in wide:
            wide[col] = float("nan")
    wide["ms_per_image"] = wide.fwd_ms / wide.batch
    wide["model"] = wide.family.map(FAMILY_LABEL) + " " + wide.config
    wide["where"] = wide.device + wide.scale.map(lambda s: "" if s == "paper" else f" [{s}]")
    return wide.sort_values(["where", "family", "config", "resolution"]).reset_index(drop=True)


def load_flops(flops_csv) -> pd.DataFrame | None:
    if flops_csv is None:
        return None
    df = pd.read_csv(flops_csv)
    missing = {"config", "resolution", "gflops"} - set(df.columns)
    if missing:
        raise ValueError(f"{flops_csv}: FLOP CSV lacks columns {sorted(missing)} (expected config,resolution,gflops)")
    df = df[["config", "resolution", "gflops"]].copy()
    df["family"] = df.config.map(_family)
    return df[df.family.isin(FAMILY_LABEL)]  # fig2.csv's DiffiT curve has no benchmark beside it


def ratios(meas: pd.DataFrame, flops: pd.DataFrame | None) -> pd.DataFrame:
    """DiT / HDiT per resolution: measured ms per image (per device) and, if given, FLOPs."""
    out = []
    for dev, d in meas.groupby("where"):
        per = d.groupby(["resolution", "family"]).ms_per_image.min().unstack()
        if {"hdit", "dit"} <= set(per.columns):
            for r, v in (per.dit / per.hdit).dropna().items():
                out.append({"kind": "wall-clock", "device": dev, "resolution": int(r), "ratio_dit_over_hdit": v})
    if flops is not None:
        per = flops.groupby(["resolution", "family"]).gflops.min().unstack()
        if {"hdit", "dit"} <= set(per.columns):
            for r, v in (per.dit / per.hdit).dropna().items():
                out.append({"kind": "GFLOPs", "device": "fvcore", "resolution": int(r), "ratio_dit_over_hdit": v})
    return pd.DataFrame(out, columns=["kind", "device", "resolution", "ratio_dit_over_hdit"])


def caption(meas: pd.DataFrame) -> str:
    devs = meas.drop_duplicates(["device", "torch"])
    where = "; ".join(f"{r.device}, torch {r.torch}" for r in devs.itertuples())
    text = f"measured on {where}"
    if (meas.device_type == "cpu").all():
        text += ("\nCPU-only data (reduced sizes" + (", default-profile models" if (meas.scale != "paper").any()
                                                     else "") +
                 "): not the paper's GPU setting; GPU numbers pending (`hdit bench --device cuda`)")
    return text


def _loglog(ax, xs, title, ylabel):
    ax.set(xscale="log", yscale="log", xlabel="resolution (px, square)", ylabel=ylabel, title=title)
    xs = sorted(set(int(x) for x in xs))
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(alpha=0.3, which="both")


def render_scaling(bench_jsons, flops_csv, out) -> list[Path]:
    """Write the figure to `out` (a prefix for OUT.png, OUT.pdf and OUT.csv, or explicit paths), atomically.
    Raises ValueError without scaling records."""
    meas, flops = load_scaling(bench_jsons), load_flops(flops_csv)
    rat = ratios(meas, flops)
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    (a_ms, a_mem), (a_fl, a_rat) = axes
    colors = {"hdit": "tab:blue", "dit": "tab:orange"}
    markers = dict(zip(sorted(meas["where"].unique()), "osD^v<>" * 8))
    for (dev, fam, cid), d in meas.groupby(["where", "family", "config"]):
        label = f"{FAMILY_LABEL[fam]} ({cid}), {dev}"
        style = dict(color=colors[fam], marker=markers[dev], label=label)
        a_ms.plot(d.resolution, d.ms_per_image, **style)
        if d.peak_mem_gib.notna().any():
            a_mem.plot(d.resolution, d.peak_mem_gib, **style)
    _loglog(a_ms, meas.resolution, "forward wall-clock", "ms per image (batch latency / batch)")
    kinds = sorted(meas.mem_kind.dropna().unique())
    _loglog(a_mem, meas.resolution, "peak memory (forward)", "GiB")
    a_ms.legend(fontsize=7)
    a_mem.legend(fontsize=7)
    if flops is not None and not flops.empty:
        for (fam, cid), d in flops.sort_values("resolution").groupby(["family", "config"]):
            a_fl.plot(d.resolution, d.gflops, color=colors[fam], marker="o", label=f"{FAMILY_LABEL[fam]} ({cid})")
        _loglog(a_fl, flops.resolution, "Figure 2: GFLOPs (fvcore, paper scale)", "GFLOP per forward pass")
        a_fl.legend(fontsize=7)
    else:
        a_fl.axis("off")
        a_fl.text(0.5, 0.5, "no FLOP CSV given", ha="center", va="center")
    if not rat.empty:
        for (kind, dev), d in rat.groupby(["kind", "device"]):
            a_rat.plot(d.resolution, d.ratio_dit_over_hdit, marker="o", ls="--" if kind == "GFLOPs" else "-",
                       label=f"{kind} ({dev})")
        if (meas.scale == "paper").any() or flops is not None:  # goals are for paper-scale models
            a_rat.scatter(list(GOALS), list(GOALS.values()), marker="x", color="k", zorder=3,
                          label="goal: wall-clock ratio on one H100")
        _loglog(a_rat, rat.resolution, "cost ratio DiT-B/4 / HDiT", "ratio")
        a_rat.legend(fontsize=7)
    else:
        a_rat.axis("off")
        a_rat.text(0.5, 0.5, "ratio needs both HDiT and DiT data", ha="center", va="center")
    batches = ", ".join(f"{int(r)} px: b{int(b)}" for r, b in meas.groupby("resolution").batch.max().items())
    fig.suptitle(f"Measured scaling, HDiT vs DiT-B/4 -- {caption(meas)}\nbatch per resolution: {batches}"
                 + (f"; memory = {', '.join(kinds)}" if kinds else ""), fontsize=9)
    fig.tight_layout()
    table = meas.drop(columns=["device_type"]).copy()
    if flops is not None:  # FLOPs are paper scale: only paper-scale measurements get them
        fl = flops.groupby(["family", "resolution"]).gflops.min().reset_index()
        table = table.merge(fl.rename(columns={"gflops": "gflops_paper_scale"}), on=["family", "resolution"],
                            how="left")
        table.loc[table.scale != "paper", "gflops_paper_scale"] = float("nan")
    if not rat.empty:
        wall = rat[rat.kind == "wall-clock"].rename(columns={"ratio_dit_over_hdit": "wall_ratio_dit_over_hdit",
                                                             "device": "where"})
        table = table.merge(wall[["where", "resolution", "wall_ratio_dit_over_hdit"]], on=["where", "resolution"],
                            how="left")
    return save(fig, table, out)
