"""The paper's reported values (the "paper" column) and the regression tolerances.

They live in one file, `results/paper/hdit_paper_values.json`, labelled as the paper's. Nothing in
this harness ever writes them into a "measured" field.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

REFERENCE_FILE = Path(__file__).resolve().parent.parent / "results" / "paper" / "hdit_paper_values.json"


@functools.lru_cache(maxsize=1)
def paper_values() -> dict:
    with open(REFERENCE_FILE) as f:
        return json.load(f)


def tolerance(name: str) -> float:
    return float(paper_values()["tolerances"][name])
