"""Reading back what the harness wrote: every file is checked (format, and the checksum recorded when it was
written) and a damaged one raises `DamagedFileError`, whose message names the file and the fix.

- JSON records (run `config.json` / `done.json`, sample `meta.json`, export `meta.json`): `write_record` stores
  `record_sha256`, the sha256 of the record's canonical JSON, inside the record; `read_record` checks it.
- npz files (sample and export shards, FID statistics, resumable partial sums): `hdit.io.save_npz` stores the
  sha256 of the arrays as `__sha256__`; `load_npz` checks it (and that the arrays it needs are there).
- Checkpoints: `hdit.io.torch_save` writes `NAME.sha256` beside the file; `load_torch` checks it.

Files written before checksums existed (or by other tools) have none: they are format-checked only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
import zlib
from pathlib import Path

from hdit.errors import HarnessError
from hdit.io import NPZ_CHECKSUM_KEY, arrays_sha256, checksum_path, file_sha256, recorded_checksums, write_text

RECORD_CHECKSUM_KEY = "record_sha256"


class DamagedFileError(HarnessError):
    """A file the harness wrote (or was given) that cannot be read back as written."""


def damaged(path, problem: str, fix: str) -> DamagedFileError:
    return DamagedFileError(f"{path}: {problem}; {fix}")


# ----------------------------------------------------------------------------- JSON records

def _canonical_sha256(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_record(path: str | os.PathLike, obj: dict) -> dict:
    """Write a JSON record atomically with its checksum; returns the record as it reads back."""
    obj = json.loads(json.dumps({k: v for k, v in obj.items() if k != RECORD_CHECKSUM_KEY}, default=str))
    write_text(path, json.dumps({**obj, RECORD_CHECKSUM_KEY: _canonical_sha256(obj)}, indent=2) + "\n")
    return obj


def read_record(path: str | os.PathLike, fix: str) -> dict:
    """A JSON object written by `write_record` (or a plain JSON object), checked; without the checksum key."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(path, f"not a readable JSON record ({e})", fix) from None
    if not isinstance(obj, dict):
        raise damaged(path, f"holds a JSON {type(obj).__name__}; expected an object", fix)
    recorded = obj.pop(RECORD_CHECKSUM_KEY, None)
    if recorded is not None and recorded != _canonical_sha256(obj):
        raise damaged(path, "its content differs from the checksum recorded when it was written (edited or "
                            "damaged)", fix)
    return obj


# ----------------------------------------------------------------------------- npz files

def _first_sentence(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.split(r"\.\s", text)[0].rstrip(".")


NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def load_npz(path: str | os.PathLike, keys: tuple[str, ...] = (), fix: str = "delete it and write it again",
             what: str = ".npz file") -> dict:
    """All arrays of an .npz file (numpy, no pickles), its checksum verified, `keys` required; `what` names the
    kind of file in messages."""
    import numpy as np

    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):
            raise ValueError("a bare .npy array, not an .npz archive")
        with z:
            arrays = {k: z[k] for k in z.files}
    except NPZ_ERRORS as e:
        raise damaged(path, f"not a readable {what} ({type(e).__name__}: {_first_sentence(e)})", fix) from None
    recorded = arrays.pop(NPZ_CHECKSUM_KEY, None)
    if recorded is not None and str(recorded) != arrays_sha256(arrays):
        raise damaged(path, "its arrays differ from the checksum recorded when it was written", fix)
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise damaged(path, f"has no {', '.join(map(repr, missing))} array(s) (holds {sorted(arrays)})", fix)
    return arrays


# ----------------------------------------------------------------------------- checkpoints

def verify_checksum(path: str | os.PathLike, fix: str) -> bool:
    """Check `path` against the digests recorded in its `NAME.sha256` (if any); True if it was checked."""
    try:
        recorded = recorded_checksums(path)
    except (OSError, UnicodeDecodeError) as e:
        raise damaged(checksum_path(path), f"not a readable checksum file ({e})",
                      f"delete it (then {path} is format-checked only)") from None
    if not recorded:
        return False
    if file_sha256(path) not in recorded:
        raise damaged(path, f"its sha256 differs from the one recorded in {checksum_path(path).name} when it was "
                            "written (truncated, damaged or replaced)", fix)
    return True


def load_torch(path: str | os.PathLike, fix: str, keys: tuple[str, ...] = (), **load_kw):
    """torch.load of a checkpoint dict, its checksum verified and `keys` required."""
    import pickle

    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise damaged(path, "empty file (0 bytes)", fix)
    verify_checksum(path, fix)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, **load_kw)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise damaged(path, f"not a readable checkpoint ({_first_sentence(e)})", fix) from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise damaged(path, f"a torch file without {', '.join(map(repr, missing))}; expected an `hdit train` "
                            "checkpoint", fix)
    return obj
