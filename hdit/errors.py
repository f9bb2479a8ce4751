"""The error every stage raises for bad input or a damaged, occupied or misplaced file.

A `HarnessError` is the user's to fix, never a bug: `hdit` prints its message (which names the bad value or
file and what to do next) and exits with code 2, without a traceback (`hdit.cli`).
"""
from __future__ import annotations

import re


class HarnessError(ValueError):
    """Bad input or a damaged/occupied file; the message says what was expected and what to do."""


# torch's DataLoader re-raises a worker's exception as `Caught X in DataLoader worker process 0.\nOriginal
# Traceback (most recent call last): ... \nmodule.X: message`: the user needs only the original message.
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def error_text(e: BaseException) -> str:
    """The message of `e` for the command line, without a DataLoader worker's traceback."""
    text = str(e)
    if _WORKER.match(text):
        original = re.split(r"\n(?=[\w.]+(?:Error|Exception): )", text)[-1]
        text = original.split(": ", 1)[1] if ": " in original else original
    return text.strip()


# `hdit train` stopped at a step all ranks agreed on (a signal, or its --time-budget spent) after writing a
# checkpoint: not a failure, the run continues with `--resume` (sysexits' EX_TEMPFAIL, "try again later").
# The workflow (and a SLURM job that ran out of time) reads this code to continue the run in a new job.
EXIT_STOPPED = 75
