"""One writer per directory: `hdit train` holds its run directory, `hdit sample` and `hdit data export` their
output directory, `hdit refstats` its cache entry. A second process exits (code 2) with a message naming
the holder.

The lock is an flock(2) on `DIR/.lock`, which holds the holder's pid, host, start time and command. The
kernel drops an flock when its holder dies, however it dies (SIGKILL included), so a crashed holder never
blocks the next run; its record, still in the file, is reported as a stale lock taken over. On file systems
without flock the record decides: a live pid on this host holds the lock, a dead one is stale; a holder on
another host cannot be checked, and the message says to remove the lock file once that process is gone.
The holder removes the file when it finishes.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import warnings
from pathlib import Path

from hdit.errors import HarnessError

LOCK_NAME = ".lock"


class RunLockedError(HarnessError):
    """Another process writes the directory."""


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict) -> bool | None:
    """Is the holder's process running? None: it runs on another host, which cannot be checked."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (which has not written its details yet)"
    return (f"{holder.get('purpose', 'a process')} (pid {holder['pid']} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


class RunLock:
    """`with RunLock(directory, "hdit train"): ...` (see the module docstring); `enabled=False` is a no-op
    (e.g. ranks > 0 of a DDP run, whose rank 0 holds the lock)."""

    def __init__(self, directory, purpose: str, name: str = LOCK_NAME, enabled: bool = True):
        self.directory, self.purpose, self.enabled = Path(directory), purpose, enabled
        self.path, self.fd = self.directory / name, None

    def __enter__(self) -> "RunLock":
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise HarnessError(f"{self.directory} is an existing file; expected a directory to write into (a new "
                               "one, or one to resume): choose another path")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HarnessError(f"cannot create the directory {self.directory} ({e.strerror})") from None
        for _ in range(100):  # retried only when the holder removed the file between our open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked, holder = _try_flock(fd), _read_holder(fd)
            alive = _alive(holder) if holder.get("pid") and holder.get("pid") != os.getpid() else False
            if locked is False or (locked is None and alive is not False):  # a working flock is authoritative
                os.close(fd)
                raise RunLockedError(self._busy_message(holder, alive))
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise RunLockedError(f"{self.path}: could not take the lock (it keeps being replaced)")
        if holder.get("pid"):
            warnings.warn(f"{self.directory}: taking over the stale lock of {describe(holder)}, which is gone",
                          stacklevel=3)
        self.fd = fd
        self._write_record()

    def _busy_message(self, holder: dict, alive: bool | None) -> str:
        msg = f"{self.directory} is in use by {describe(holder)}: only one process may write it at a time"
        if alive is None and holder.get("pid"):
            return (f"{msg}; that host cannot be checked from here: if pid {holder['pid']} is no longer running "
                    f"there, remove {self.path} and start again")
        if not holder.get("pid"):
            return f"{msg}; wait for it to finish, or use another output directory"
        pid = holder["pid"]
        return (f"{msg}; wait for it to finish, or use another output directory. If it is a job left running by a "
                f"snakemake that was killed (killing snakemake does not stop the jobs it started), stop it with "
                f"`kill {pid}` (`hdit train` writes a checkpoint and exits on SIGTERM; check with `ps -p {pid}`), "
                "then rerun snakemake with --rerun-incomplete: training resumes from that checkpoint")

    def _write_record(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": now, "purpose": self.purpose,
                  "command": " ".join(sys.argv)}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a waiting opener retries on the new file
        finally:
            os.close(self.fd)
            self.fd = None
