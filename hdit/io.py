"""Atomic file writes: a killed job never leaves a half-written result or checkpoint behind.

Everything is written to a temporary file in the destination directory, flushed and fsynced, then
renamed over the target (rename is atomic on POSIX file systems). Temporaries are named
`.NAME.XXXXXXXX.tmp`: hidden and ending in `.tmp`, so no reader's pattern (`shard-*.npz`, `*.png`, ...) ever
takes one; a killed writer's temporaries are removed by `remove_stale_temporaries` when its job resumes.

Checksums (verified on reading by `hdit.integrity`): `save_npz` stores the sha256 of its arrays inside the
file (`__sha256__`); `torch_save` writes `NAME.sha256` beside the file (`sha256sum -c` format).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

TMP_SUFFIX = ".tmp"
NPZ_CHECKSUM_KEY = "__sha256__"
CHECKSUM_SUFFIX = ".sha256"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed.

    Writers that pick a format from the file name must be told the format (the temporary ends in .tmp).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(directory: str | os.PathLike, prefix: str = ".") -> list[Path]:
    """Delete the temporaries a killed writer left in `directory` (names `prefix*.tmp`, hidden). Only call
    this while holding the directory's lock (`hdit.runlock`): another writer's temporary would go too."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f"{prefix}*{TMP_SUFFIX}") if p.name.startswith(".") and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        warnings.warn(f"{directory}: removed {len(stale)} temporary file(s) of an interrupted write "
                      f"({', '.join(p.name for p in stale[:3])}{', ...' if len(stale) > 3 else ''})", stacklevel=2)
    return stale


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_path(path: str | os.PathLike) -> Path:
    """`checkpoint.pt` -> `checkpoint.pt.sha256`."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def recorded_checksums(path: str | os.PathLike) -> list[str]:
    """The sha256 digests `checksum_path(path)` records for `path` (empty if it has none)."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return []
    return [line.split()[0] for line in sidecar.read_text().splitlines() if line.strip()]


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save atomically and record the file's sha256 in `checksum_path(path)`. Until the new file is
    renamed into place the checksum file lists both the new and the old digest, so a kill at any moment leaves
    a checkpoint that verifies (the old one or the new one), never one checked against another file's digest."""
    import torch

    path = Path(path)
    line = "{}  " + path.name + "\n"
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        digest = file_sha256(tmp)
        old = recorded_checksums(path) if path.exists() else []
        write_text(checksum_path(path), "".join(line.format(d) for d in [digest] + old))
    write_text(checksum_path(path), line.format(digest))


def arrays_sha256(arrays: dict) -> str:
    """sha256 over the name, dtype, shape and bytes of every array (sorted by name)."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype object; expected a plain numeric or string array")
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """np.savez atomically, with the sha256 of the arrays stored as `__sha256__` (checked by
    `hdit.integrity.load_npz`)."""
    import numpy as np

    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if NPZ_CHECKSUM_KEY in arrays:
        raise ValueError(f"{NPZ_CHECKSUM_KEY!r} is reserved for the checksum")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy appends no .npz
        np.savez(f, **arrays, **{NPZ_CHECKSUM_KEY: np.array(arrays_sha256(arrays))})
