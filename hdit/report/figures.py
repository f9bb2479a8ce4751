"""Figures 2, 8 and 9: PNG + PDF + the CSV behind each, in results/figures/.

Figure 2: GFLOPs vs resolution, HDiT (step E) vs DiT-B/4 in pixel space, from the FLOP counter, plus a
third curve: image-space DiffiT (default FFHQ-64 layout, from 64 px), with each curve's complexity slope.
Figure 8: min-SNR vs soft-min-SNR loss weight over sigma (gamma = 5), from the trainer's own weighting.
Figure 9: IS vs FID over classifier-free guidance scales for the ImageNet-256 config.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hdit import io  # noqa: E402
from hdit.report.tables import complexity, gflops_slope  # noqa: E402

FIG2_CONFIGS = {"E": "HDiT-B/4 (ours, step E)", "R1": "DiT-B/4", "diffit-ffhq64": "DiffiT (image space, L = 4)"}


FIGURE_SUFFIXES = (".png", ".pdf", ".csv")


def outputs(out) -> list[Path]:
    """The files a figure is written to: explicit paths (any of .png, .pdf, .csv), or a prefix -> all three."""
    paths = [Path(p) for p in out] if isinstance(out, (list, tuple)) else [Path(out).with_suffix(s)
                                                                         for s in FIGURE_SUFFIXES]
    bad = [str(p) for p in paths if p.suffix not in FIGURE_SUFFIXES]
    if bad or not paths:
        raise ValueError(f"figure output {bad or paths}: expected files ending in {', '.join(FIGURE_SUFFIXES)}")
    return paths


def save(fig, df: pd.DataFrame, out) -> list[Path]:
    """Write the figure (.png, .pdf) and the data behind it (.csv) atomically to `outputs(out)`."""
    paths = outputs(out)
    for p in paths:
        if p.suffix == ".csv":
            io.write_text(p, df.to_csv(index=False, float_format="%.6g"))
            continue
        with io.atomic_path(p) as tmp:
            fig.savefig(tmp, format=p.suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def fig2_frame(flops: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([{"config": f["config"], "model": FIG2_CONFIGS[f["config"]], "resolution": int(f["resolution"]),
                        "gflops": float(f["gflops"]), "params": f.get("params")}
                       for f in flops if f["config"] in FIG2_CONFIGS and f.get("profile", "paper") == "paper"])
    if df.empty:
        raise ValueError(f"no FLOP counts for {list(FIG2_CONFIGS)} in the FLOP JSON")
    df = df.sort_values(["config", "resolution"]).reset_index(drop=True)
    slopes = {c: top_slope(d) for c, d in df.groupby("config")}
    df["complexity_slope"] = df.config.map(slopes)
    df["complexity"] = df.complexity_slope.map(complexity)
    return df


def top_slope(d: pd.DataFrame) -> float:
    """d log(GFLOPs) / d log(pixel count) between a curve's two highest resolutions (its asymptotic class)."""
    if len(d) < 2:
        return float("nan")
    lo, hi = d.sort_values("resolution").iloc[-2:].itertuples()
    return gflops_slope(lo.gflops, hi.gflops, lo.resolution, hi.resolution)


def fig2(flops: list[dict], out, annotate_at: int = 1024) -> list[Path]:
    """Computational cost vs target resolution (paper Figure 2), log-log, ratio annotated at 1024 px."""
    df = fig2_frame(flops)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for cid, label in FIG2_CONFIGS.items():
        d = df[df.config == cid]
        if len(d):
            slope = d.complexity_slope.iloc[0]
            ax.plot(d.resolution, d.gflops, marker="o", label=f"{label}: slope {slope:.2f}, {complexity(slope)}")
    at = df[df.resolution == annotate_at].set_index("config").gflops
    if {"E", "R1"} <= set(at.index):
        ratio = at["E"] / at["R1"]
        ax.annotate(f"{annotate_at} px: HDiT = {100 * ratio:.2f}% of DiT\n({at['E']:.0f} vs {at['R1']:.0f} GFLOP)",
                    xy=(annotate_at, at["E"]), xytext=(0.03, 0.97), textcoords="axes fraction", va="top",
                    fontsize=8, arrowprops=dict(arrowstyle="->", lw=0.8))
        df["ratio_e_over_dit"] = df.resolution.map(lambda r: _ratio(df, r))
    ax.set(xscale="log", yscale="log", xlabel="resolution (px, square)", ylabel="GFLOP per forward pass",
           title="Figure 2: cost vs resolution (fvcore, paper scale)")
    res = sorted(df.resolution.unique())
    ax.set_xticks(res, [str(r) for r in res])
    ax.minorticks_off()
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below the axes: three curves
    return save(fig, df, out)


def _ratio(df: pd.DataFrame, res: int) -> float:
    at = df[df.resolution == res].set_index("config").gflops
    return float(at["E"] / at["R1"]) if {"E", "R1"} <= set(at.index) else float("nan")


def fig8_frame(gamma: float = 5.0, sigma_min: float = 1e-2, sigma_max: float = 1e2, n: int = 400) -> pd.DataFrame:
    import torch

    from hdit.diffusion.edm import weighting

    sigma = torch.logspace(np.log10(sigma_min), np.log10(sigma_max), n, dtype=torch.float64)
    return pd.DataFrame({"sigma": sigma.numpy(), "min_snr": weighting("min-snr", sigma, gamma).numpy(),
                         "soft_min_snr": weighting("soft-min-snr", sigma, gamma).numpy(),
                         "snr": weighting("snr", sigma, gamma).numpy(), "gamma": gamma})


def fig8(out, gamma: float = 5.0) -> list[Path]:
    """Loss weight over sigma (x0 space, paper eq. 7-9): min-SNR (blue) vs soft-min-SNR (orange)."""
    df = fig8_frame(gamma)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(df.sigma, df.min_snr, color="tab:blue", label=f"min-SNR (γ = {gamma:g})")
    ax.plot(df.sigma, df.soft_min_snr, color="tab:orange", label=f"soft-min-SNR (γ = {gamma:g})")
    ax.set(xscale="log", yscale="log", xlabel="σ", ylabel="loss weight (x₀ space)",
           title="Figure 8: loss weighting over σ")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, df, out)


def fig9_frame(metrics: list[dict]) -> pd.DataFrame:
    rows = [{"cfg_scale": float(m["sample"]["cfg_scale"]), "fid": m["fid"], "is_mean": m.get("is_mean"),
             "is_std": m.get("is_std"), "n": m.get("n"), "fid_mode": m.get("fid_mode"), "config": m.get("config"),
             "profile": m.get("profile"), "scale": m.get("scale")} for m in metrics]
    df = pd.DataFrame(rows).sort_values("cfg_scale").reset_index(drop=True)
    if df.is_mean.isna().any() and not df.is_mean.isna().all():
        raise ValueError(f"Inception Score missing for cfg scales {list(df.cfg_scale[df.is_mean.isna()])}")
    return df


def fig9(metrics: list[dict], out, paper_best: dict | None = None) -> list[Path]:
    """IS vs FID over CFG scales (paper Figure 9) for the ImageNet-256 config as trained by the profile."""
    df = fig9_frame(metrics)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    fid_label = f"FID ({df.fid_mode.iloc[0]}, n = {df.n.iloc[0]})"
    text = f"measured at: {df.scale.iloc[0]}"
    if df.is_mean.isna().all():  # offline Inception without classifier head: FID over w only, said plainly
        ax.plot(df.cfg_scale, df.fid, marker="o")
        ax.set(xlabel="CFG scale w (1 = no guidance)", ylabel=fid_label,
               title="Figure 9 (FID only): IS unavailable with this Inception file")
        # the full reason (with local paths) stays in the metrics JSON's `is_unavailable`; the figure says why
        text += ("\nInception Score not measured: the Inception file used has no 1008-way classifier (reason in "
                 "the metrics JSON, `is_unavailable`);\nprovide NVIDIA's inception-2015-12-05.pt via "
                 "$HDIT_INCEPTION_PATH for the IS axis.")
    else:
        ax.plot(df.fid, df.is_mean, marker="o")
        for _, r in df.iterrows():
            ax.annotate(f"w={r.cfg_scale:g}", (r.fid, r.is_mean), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        ax.set(xlabel=fid_label, ylabel="Inception Score", title="Figure 9: IS vs FID over CFG scale")
    ax.grid(alpha=0.3)
    if paper_best:
        text += (f"\npaper (ImageNet-256, FID-50k, not comparable): best FID {paper_best['fid']} / "
                 f"IS {paper_best['is']} at w = {paper_best['cfg_scale']}")
    fig.text(0.0, -0.02, text, fontsize=6, va="top", wrap=True)
    return save(fig, df, out)
