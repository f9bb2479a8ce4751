"""Writers for a rendered table: Markdown, LaTeX (booktabs) and CSV, all written atomically.

The CSV holds every column of the DataFrame (machine-readable, full precision); Markdown and LaTeX show
the `display` columns with their headers and number formats, a caption that states the scale at which
the numbers were measured, and notes underneath.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hdit import io

MISSING = {"md": "–", "tex": "--"}
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


@dataclass
class Column:
    key: str  # DataFrame column
    header: str
    fmt: str = "{}"  # format for non-missing values, e.g. "{:.2f}"


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


def cell(value, fmt: str, flavor: str) -> str:
    if _missing(value):
        return MISSING[flavor]
    text = fmt.format(value)
    return tex_escape(text) if flavor == "tex" else text.replace("|", "\\|")


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_markdown(t: Table) -> str:
    head = "| " + " | ".join(c.header for c in t.display) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" if _numeric(t.df, c) else "---"
                          for i, c in enumerate(t.display)) + "|"
    body = ["| " + " | ".join(cell(r[c.key], c.fmt, "md") for c in t.display) + " |" for _, r in t.df.iterrows()]
    notes = [f"- {n}" for n in t.notes]
    return "\n".join([f"**{t.label}.** {t.caption}", "", head, rule, *body, "", *notes]) + "\n"


def to_latex(t: Table) -> str:
    align = "".join("r" if _numeric(t.df, c) else "l" for c in t.display)
    head = " & ".join(tex_escape(c.header) for c in t.display) + r" \\"
    body = [" & ".join(cell(r[c.key], c.fmt, "tex") for c in t.display) + r" \\" for _, r in t.df.iterrows()]
    notes = [r"\par\footnotesize " + tex_escape(n) for n in t.notes]
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\caption{" + tex_escape(f"{t.label}. {t.caption}") + "}",
                      r"\label{tab:" + t.name + "}", r"\begin{tabular}{" + align + "}", r"\toprule", head,
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}", *notes, r"\end{table}"]) + "\n"


def _numeric(df: pd.DataFrame, c: Column) -> bool:
    return pd.api.types.is_numeric_dtype(df[c.key]) and not pd.api.types.is_bool_dtype(df[c.key])


def write(t: Table, out_dir: str | Path) -> list[Path]:
    """results/tables/<name>.{md,tex,csv}."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{t.name}.{ext}" for ext in ("md", "tex", "csv")]
    io.write_text(paths[0], to_markdown(t))
    io.write_text(paths[1], to_latex(t))
    io.write_text(paths[2], t.df.to_csv(index=False, float_format="%.6g"))
    return paths
