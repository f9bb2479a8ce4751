"""Provenance recorded beside every result: versions, device, git commit, command line."""
from __future__ import annotations

import datetime
import importlib.metadata
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device=None) -> str:
    import torch

    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the results/bench/<slug>.json file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def nvidia_gpu_slug() -> str | None:
    """The first NVIDIA GPU's name as a slug, from nvidia-smi (no torch import: the Snakefile calls this
    while building the DAG), or None on a machine without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    names = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return device_slug(names[0]) if names else None


def versions() -> dict:
    """Commit, command and package versions, read from the installed metadata: no torch import (~3 s), so the
    jobs that only read and write records (`hdit report metrics`) stay light."""
    return {
        "hdit_repro_commit": git_commit(),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "numpy": importlib.metadata.version("numpy"),
        "host": platform.node(),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def provenance(device=None) -> dict:
    """`versions()` plus what the computing process ran on: CUDA version and device."""
    import torch

    return {**versions(), "torch": torch.__version__, "cuda": torch.version.cuda, "device": device_name(device)}
