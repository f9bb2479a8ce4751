"""Atomic file writes: a killed job never leaves a half-written result or checkpoint behind.

Everything is written to a temporary file in the destination directory, flushed and fsynced, then
renamed over the target (rename is atomic on POSIX file systems). Temporaries are named
`.NAME.XXXXXXXX.tmp`: hidden and ending in `.tmp`, so no reader's pattern (`shard-*.npz`, `*.png`, ...) ever
takes one; a killed writer's temporaries are removed by `remove_stale_temporaries` when its job resumes.

Checksums (verified on reading by `hdit.integrity`): `save_npz` stores the sha256 of its arrays inside the
file (`__sha256__`); `torch_save` writes `NAME.sha256` beside the file (`sha256sum -c` format).

A write that fails (no space left, the file-size limit, a path below an existing file, ...) raises `WriteError`
naming the file and the cause; the previous version of the file, if any, is untouched (the temporary goes).
torch's own error for a failed write ("enforce fail ... unexpected pos") names neither: `torch_save` writes through
a file object that keeps the operating system's error.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

from hdit.errors import HarnessError

TMP_SUFFIX = ".tmp"
NPZ_CHECKSUM_KEY = "__sha256__"
CHECKSUM_SUFFIX = ".sha256"


class WriteError(HarnessError):
    """A file could not be written (the message names it and the cause); nothing was replaced."""


CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
          errno.EFBIG: "file too large (the file-size limit, `ulimit -f`, or the file system's)",
          errno.ENOTDIR: "not a directory (a part of the path is an existing file)",
          errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
          errno.EISDIR: "it is a directory", errno.ENAMETOOLONG: "file name too long", errno.EIO: "input/output error"}


def write_error(path, e: OSError) -> WriteError:
    """`e` (raised while writing `path`) as a WriteError naming the file, the cause and what to do."""
    cause = CAUSES.get(e.errno, e.strerror or str(e))
    what = "free space or choose another location" if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
        "raise the limit or choose another location" if e.errno == errno.EFBIG else "choose another location"
    kept = " (its previous version, if any, is unchanged)" if Path(path).is_file() else ""
    return WriteError(f"cannot write {path}: {cause}{kept}; {what}, then run the command again")


def check_writable(path: str | os.PathLike) -> None:
    """Refuse at once, before any work, an output `path` that cannot be created: an existing directory, or a
    part of its parent path that is an existing file (ENOTDIR)."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory; expected a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise write_error(path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
            return


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed. An OSError
    while writing becomes a `WriteError` naming `path`.

    Writers that pick a format from the file name must be told the format (the temporary ends in .tmp).
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        tmp = Path(tmp)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp is not None and tmp.exists():
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
        with open(tmp, "wb") as f:
            writer = _KeepsWriteErrors(f)
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is not None:  # torch's message names neither the file nor the cause
                    raise writer.error from None
                raise
        digest = file_sha256(tmp)
        old = recorded_checksums(path) if path.exists() else []
        write_text(checksum_path(path), "".join(line.format(d) for d in [digest] + old))
    write_text(checksum_path(path), line.format(digest))


class _KeepsWriteErrors:
    """A file object for torch.save that keeps the OSError of a failed write (torch replaces it by its own)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


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
