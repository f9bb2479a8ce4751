"""Writers for a rendered table: Markdown, LaTeX (booktabs), HTML and CSV, all with pandas, all written atomically.

The CSV holds every column of the DataFrame (machine-readable, full precision); Markdown (`DataFrame.to_markdown`),
LaTeX and HTML (`Styler.to_latex` / `Styler.to_html`) show the `display` columns with their headers and number
formats, a value's 95% interval beside it, a caption that states the scale at which the numbers were measured,
and notes underneath. Which writer runs is chosen by the output file's suffix.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hdit import io

MISSING = {"md": "–", "tex": "--", "html": "–"}
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
SUFFIXES = (".md", ".tex", ".html", ".csv")


@dataclass
class Column:
    key: str  # DataFrame column
    header: str
    fmt: str = "{}"  # format for non-missing values, e.g. "{:.2f}"
    ci: tuple[str, str] | None = None  # DataFrame columns of the value's 95% interval, shown beside it
    factor: float = 1.0  # display multiplier (KID x 10^3)


@dataclass
class Table:
    name: str  # "table1"
    caption: str
    df: pd.DataFrame
    display: list[Column]
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """'table1' -> 'Table 1', 'table_diffit' -> 'Table diffit'."""
        return re.sub(r"^table_?", "Table ", self.name)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def text(row, c: Column) -> str | None:
    """The display text of one cell (None: missing): the value, and its interval as `[lo, hi]` when known."""
    value = row[c.key]
    if _missing(value):
        return None
    scaled = value * c.factor if c.factor != 1 else value
    out = c.fmt.format(scaled)
    if c.ci is not None and not any(_missing(row.get(k)) for k in c.ci):
        lo, hi = (c.fmt.format(row[k] * c.factor) for k in c.ci)
        out += f" [{lo}, {hi}]"
    return out


def cell(row, c: Column, flavor: str) -> str:
    t = text(row, c)
    if t is None:
        return MISSING[flavor]
    return tex_escape(t) if flavor == "tex" else t.replace("|", "\\|") if flavor == "md" else t


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _numeric(df: pd.DataFrame, c: Column) -> bool:
    return pd.api.types.is_numeric_dtype(df[c.key]) and not pd.api.types.is_bool_dtype(df[c.key])


def cells(t: Table, flavor: str) -> pd.DataFrame:
    """The display frame: one formatted string per cell, headers as column names."""
    headers = [tex_escape(c.header) if flavor == "tex" else c.header for c in t.display]
    return pd.DataFrame([[cell(r, c, flavor) for c in t.display] for _, r in t.df.iterrows()], columns=headers,
                        dtype=object)


def to_markdown(t: Table) -> str:
    align = ["right" if i and _numeric(t.df, c) else "left" for i, c in enumerate(t.display)]
    body = cells(t, "md").to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True)
    notes = [f"- {n}" for n in t.notes]
    return "\n".join([f"**{t.label}.** {t.caption}", "", body, "", *notes]) + "\n"


def to_latex(t: Table) -> str:
    align = "".join("r" if i and _numeric(t.df, c) else "l" for i, c in enumerate(t.display))
    latex = cells(t, "tex").style.hide(axis="index").to_latex(
        column_format=align, hrules=True, position="t", position_float="centering", label=f"tab:{t.name}",
        caption=tex_escape(f"{t.label}. {t.caption}"))
    notes = "".join(r"\par\footnotesize " + tex_escape(n) + "\n" for n in t.notes)
    return latex.replace(r"\end{table}", notes + r"\end{table}")


def to_html(t: Table) -> str:
    """A standalone HTML fragment (the table as the Snakemake report shows it)."""
    table = cells(t, "html").style.hide(axis="index").format(escape="html").set_caption(
        html.escape(f"{t.label}. {t.caption}")).set_table_styles(
        [{"selector": "td, th", "props": "padding: 2px 8px; text-align: right;"},
         {"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: bold;"}]).to_html()
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes)
    return f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n{table}<ul>{notes}</ul>\n</body></html>\n"


def to_csv(t: Table) -> str:
    return t.df.to_csv(index=False, float_format="%.6g")


WRITERS = {".md": to_markdown, ".tex": to_latex, ".html": to_html, ".csv": to_csv}


def write_files(t: Table, paths) -> list[Path]:
    """Write `t` to each path, in the format its suffix names (.md, .tex, .html, .csv)."""
    paths = [Path(p) for p in paths]
    bad = [str(p) for p in paths if p.suffix not in WRITERS]
    if bad:
        raise ValueError(f"output {bad}: unknown table format; expected files ending in {', '.join(SUFFIXES)}")
    for p in paths:
        io.write_text(p, WRITERS[p.suffix](t))
    return paths


def write(t: Table, out_dir: str | Path) -> list[Path]:
    """<out_dir>/<name>.{md,tex,csv}."""
    return write_files(t, [Path(out_dir) / f"{t.name}.{ext}" for ext in ("md", "tex", "csv")])
