"""Training curves (issue 13): loss (raw and smoothed) and throughput against step for the runs of one table.

Read from each run's `log.csv` (`hdit train`: step, loss, lr, img_per_s, elapsed_s, one row every
--log-every steps). Rows that share a training run (`hdit.report.runs`) are drawn once, labelled with every
row name (and the run, the name of the log's directory, where it is none of them). The loss is smoothed with an exponential moving average over `smooth` log rows (pandas `ewm`,
span = smooth); throughput is drawn as logged.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = ("step", "loss", "img_per_s")


def read_log(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no training log; expected the log.csv that `hdit train` writes in its run dir")
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing; expected {', '.join(COLUMNS)}")
    if df.empty:
        raise ValueError(f"{path}: no rows yet; the run logged nothing")
    return df.sort_values("step").reset_index(drop=True)


def curves_frame(logs: dict[str, Path], smooth: int = 5) -> pd.DataFrame:
    """One frame over every distinct log: `label` (the rows sharing it, ' = '-joined), step, loss, loss_smooth,
    img_per_s."""
    if smooth < 1:
        raise ValueError(f"smooth={smooth}; expected a positive number of log rows")
    by_log: dict[Path, list[str]] = {}
    for row, path in logs.items():
        by_log.setdefault(Path(path), []).append(row)
    frames = []
    for path, rows in by_log.items():
        df = read_log(path)[list(COLUMNS)].copy()
        df["loss_smooth"] = df.loss.ewm(span=smooth).mean()
        run = path.parent.name
        df.insert(0, "label", " = ".join(rows) + ("" if run in rows else f" (run {run})"))
        df.insert(1, "log", str(path))
        frames.append(df)
    if not frames:
        raise ValueError("no training logs given")
    return pd.concat(frames, ignore_index=True)


def render_curves(logs: dict[str, Path], out, title: str, smooth: int = 5) -> list[Path]:
    """Two panels (smoothed loss, img/s) against step; the figure and its CSV at `out` (see figures.outputs)."""
    import matplotlib.pyplot as plt

    from hdit.report.figures import save

    df = curves_frame(logs, smooth)
    fig, (a_loss, a_speed) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (label, d) in enumerate(df.groupby("label", sort=False)):
        color = f"C{i % 10}"
        a_loss.plot(d.step, d.loss, color=color, alpha=0.25, lw=0.8)
        a_loss.plot(d.step, d.loss_smooth, color=color, label=label)
        a_speed.plot(d.step, d.img_per_s, color=color, label=label)
    a_loss.set(xlabel="training step", ylabel=f"loss (EMA over {smooth} log rows; raw faint)", yscale="log")
    a_speed.set(xlabel="training step", ylabel="throughput (img/s)")
    for ax in (a_loss, a_speed):
        ax.grid(alpha=0.3, which="both")
    a_loss.legend(fontsize=7, ncol=2)
    fig.text(0.01, -0.01, title, fontsize=8, va="top", wrap=True)
    fig.tight_layout()
    return save(fig, df, out)
