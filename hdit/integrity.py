"""Reading back what the harness wrote: every file is checked (format, and the checksum recorded when it was
written) and a damaged one raises `DamagedFileError`, whose message names the file and the fix.

- JSON records (run `config.json` / `done.json`, sample `meta.json`, export `meta.json`): `write_record` stores
  `record_sha256`, the sha256 of the record's canonical JSON, inside the record; `read_record` checks it.
- npz files (sample and export shards, FID statistics, resumable partial sums): `hdit.io.save_npz` stores the
  sha256 of the arrays as `__sha256__`; `load_npz` checks it (and that the arrays it needs are there).
- Checkpoints: `hdit.io.torch_save` writes `NAME.sha256` beside the file; `load_torch` checks it.

A file the harness wrote is never trusted without its checksum: a checkpoint whose `.sha256` is missing or
unreadable, an npz without `__sha256__`, is an error naming the file (caches catch it and recompute). A
damaged checksum file is reported as such, not as damaged weights. JSON records without `record_sha256` (hand
written, or older) are format-checked only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import zipfile
import zlib
from pathlib import Path

from hdit.errors import HarnessError
from hdit.io import NPZ_CHECKSUM_KEY, arrays_sha256, checksum_path, file_sha256, write_text

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
    """All arrays of an .npz file (numpy, no pickles), its checksum verified (a file without one is refused),
    `keys` required; `what` names the kind of file in messages."""
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
    if recorded is None:
        raise damaged(path, f"has no {NPZ_CHECKSUM_KEY!r} checksum (every {what} the harness writes records one): "
                            "it cannot be verified (written by another tool, or re-saved)", fix)
    if str(recorded) != arrays_sha256(arrays):
        raise damaged(path, "its arrays differ from the checksum recorded when it was written", fix)
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise damaged(path, f"has no {', '.join(map(repr, missing))} array(s) (holds {sorted(arrays)})", fix)
    return arrays


# ----------------------------------------------------------------------------- checkpoints

DIGEST_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


def vouch_fix(path: Path, fix: str) -> str:
    """Advice for a file whose checksum is missing or damaged: the file itself was not checked."""
    return (f"if you trust {path.name} (e.g. you copied it yourself), record its checksum again with "
            f"`cd {shlex.quote(str(path.parent))} && sha256sum {shlex.quote(path.name)} > "
            f"{shlex.quote(checksum_path(path).name)}`; otherwise {fix}")


def verify_checksum(path: str | os.PathLike, fix: str) -> str:
    """Check `path` against the digests recorded in its `NAME.sha256`, which must exist; returns the digest."""
    path, sidecar = Path(path), checksum_path(path)
    if not sidecar.is_file():
        raise damaged(path, f"has no checksum file {sidecar.name} (the harness writes one with every checkpoint): "
                            "it cannot be verified (a partial copy, or re-saved by another tool)", vouch_fix(path, fix))
    try:
        lines = [line for line in sidecar.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        lines = [f"unreadable ({e})"]
    matches = [DIGEST_LINE.fullmatch(line) for line in lines]
    if not lines or not all(m and m[2] == path.name for m in matches):
        raise damaged(sidecar, f"not a checksum file of {path.name} (expected lines `<sha256>  {path.name}`); "
                               f"{path.name} itself was not checked", vouch_fix(path, fix))
    digest = file_sha256(path)
    if digest not in [m[1] for m in matches]:
        raise damaged(path, f"its sha256 differs from the one recorded in {sidecar.name} when it was "
                            "written (truncated, damaged or replaced)", fix)
    return digest


def load_torch(path: str | os.PathLike, fix: str, keys: tuple[str, ...] = (), **load_kw):
    """torch.load of a checkpoint dict, its checksum verified and `keys` required."""
    return load_torch_verified(path, fix, keys, **load_kw)[0]


def load_torch_verified(path: str | os.PathLike, fix: str, keys: tuple[str, ...] = (), **load_kw) -> tuple[dict, str]:
    """(checkpoint dict, the file's verified sha256): `load_torch`, and the digest that identifies the weights."""
    import pickle

    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise damaged(path, "empty file (0 bytes)", fix)
    digest = verify_checksum(path, fix)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, **load_kw)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise damaged(path, f"not a readable checkpoint ({_first_sentence(e)})", fix) from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise damaged(path, f"a torch file without {', '.join(map(repr, missing))}; expected an `hdit train` "
                            "checkpoint", fix)
    return obj, digest


# ----------------------------------------------------------------------------- shard sets

# A shard set (`hdit sample`'s samples, `hdit data export`'s images) is complete or it is nothing: its meta.json,
# written LAST, records every shard (name, image count, the sha256 stored inside it) and the total; while shards
# are still being written the settings sit in a hidden partial record (`.sampling.json`, `.export.json`). A reader
# takes exactly the recorded shards or refuses the set by name.
SET_RECORD = "meta.json"
PARTIAL_RECORDS = (".sampling.json", ".export.json")
SHARD_GLOB = "shard-*.npz"


def shard_entry(path: Path) -> dict:
    """{"n", "sha256"} of a shard: its image count (from `labels`) and the checksum stored inside it."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            digest = str(z[NPZ_CHECKSUM_KEY]) if NPZ_CHECKSUM_KEY in z.files else None  # None: never matches
            return {"n": int(z["labels"].shape[0]), "sha256": digest}
    except (*NPZ_ERRORS, AttributeError) as e:
        raise damaged(path, f"not a readable shard ({type(e).__name__}: {_first_sentence(e)})",
                      "delete it and rerun the command that wrote the set: it writes the missing shards") from None


def write_set_record(directory, record: dict, num_shards: int) -> dict:
    """Write `directory`/meta.json LAST, listing shards 0 .. num_shards - 1 (all must be there); removes the
    partial record. Returns the record written."""
    directory = Path(directory)
    names = [f"shard-{k:05d}.npz" for k in range(num_shards)]
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise damaged(directory / missing[0], "missing from the set being completed",
                      "rerun the command: it writes the missing shards")
    shards = {n: shard_entry(directory / n) for n in names}
    record = write_record(directory / SET_RECORD, {**record, "count": sum(s["n"] for s in shards.values()),
                                                    "shards": shards})
    for name in PARTIAL_RECORDS:
        (directory / name).unlink(missing_ok=True)
    return record


def set_fix(directory: Path) -> str:
    return (f"rerun the `hdit sample` (or `hdit data export`) command that wrote {directory} with the same settings: "
            "it writes the missing shards and then meta.json")


def check_set(directory, shards: list[Path]) -> dict:
    """meta.json of a shard set, checked against the `shards` found: exactly the recorded names and checksums."""
    directory = Path(directory)
    path = directory / SET_RECORD
    if not path.is_file():
        partial = [n for n in PARTIAL_RECORDS if (directory / n).is_file()]
        why = f": its writer stopped before the end, {partial[0]} holds its settings" if partial else ""
        raise DamagedFileError(f"{directory}: {len(shards)} shard(s) but no meta.json, so not a complete set{why}; "
                               f"{set_fix(directory)}")
    record = read_record(path, f"delete it and {set_fix(directory)} (the shards are checked and kept)")
    recorded = record.get("shards")
    if not isinstance(recorded, dict):
        raise damaged(path, "records no shard list (written before sets recorded their shards, so what the set "
                            "held cannot be checked)", f"delete {directory} and write the set again")
    found = {str(p.relative_to(directory)): p for p in shards}
    missing, extra = sorted(set(recorded) - set(found)), sorted(set(found) - set(recorded))
    if missing:
        raise DamagedFileError(f"{directory}: {len(missing)} of the {len(recorded)} shards meta.json records are "
                               f"missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                               f"{set_fix(directory)}")
    if extra:
        raise DamagedFileError(f"{directory}: {extra[0]} is not one of the shards meta.json records (not part of "
                               "this set); move it out")
    for name, entry in recorded.items():
        if shard_entry(found[name]) != entry:
            raise damaged(found[name], "not the shard meta.json records (its images or checksum differ: replaced "
                                       "after the set was written)", f"delete it and {set_fix(directory)}")
    return record
