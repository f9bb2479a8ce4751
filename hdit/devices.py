"""The one check of `--device` for every command (`hdit train`, `sample`, `fid`, `refstats`, `classify`).

Accepted: `cpu`, `cuda` and `cuda:N` with N below the number of CUDA devices torch sees; None picks `cuda` when
torch sees one, else `cpu`. Anything else (`tpu`, `cuda:9` on a 1-GPU machine, `cuda` without a driver) is a
`DeviceError` (exit code 2) naming the value and what this machine offers, raised before any work.

Under torchrun (WORLD_SIZE > 1) each rank trains on `cuda:LOCAL_RANK`: `--device cuda` means exactly that, and an
explicit `cuda:N` that is not the rank's own device is refused (never silently replaced by LOCAL_RANK).
"""
from __future__ import annotations

import re

import torch

from hdit.errors import HarnessError

DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


class DeviceError(HarnessError):
    """A --device value this machine cannot run."""


def offered() -> str:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "cpu" + (f", cuda, cuda:0..cuda:{n - 1}" if n else " only (torch sees no CUDA device)")


def resolve_device(device: str | torch.device | None, option: str = "--device") -> torch.device:
    """The torch.device of a --device value, checked (module docstring)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = DEVICE.fullmatch(str(device).strip())
    if m is None or (m[1] == "cpu" and m[2] not in (None, "0")):
        raise DeviceError(f"{option} {str(device)!r}; expected cpu, cuda or cuda:N (this machine: {offered()})")
    if m[1] == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"{option} {device}: torch sees no CUDA device (no GPU, no driver, or a CPU-only torch "
                          f"build); use --device cpu (this machine: {offered()})")
    if m[2] is not None and int(m[2]) >= torch.cuda.device_count():
        raise DeviceError(f"{option} {device}: torch sees {torch.cuda.device_count()} CUDA device(s); expected "
                          f"an index below that (this machine: {offered()})")
    return torch.device(str(device).strip())


def rank_device(device: str | None, local_rank: int, world_size: int) -> torch.device:
    """The training device of one rank: `resolve_device`, then under torchrun cuda:LOCAL_RANK (module docstring)."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev
    if world_size == 1:  # one process: an explicit index is honoured
        return dev if dev.index is not None else torch.device("cuda", 0)
    if dev.index is not None and dev.index != local_rank:
        raise DeviceError(f"--device {device} under torchrun, whose rank {local_rank} trains on cuda:{local_rank} "
                          "(LOCAL_RANK): pass --device cuda (each rank takes its own GPU), or choose the GPUs with "
                          "CUDA_VISIBLE_DEVICES")
    dev = torch.device("cuda", local_rank)
    resolve_device(str(dev), "device of rank")
    return dev
