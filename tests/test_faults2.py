"""Faults round two (issue 25): incomplete sets, non-finite checkpoints, advice that must work, write failures,
paths with spaces, devices. Each test creates the fault, asserts the message and exit code 2, follows the advice
where there is one, and checks that nothing finished was lost.

Same small runs as tests/test_faults.py (default profile, E, batch 2, 2 steps) and its stand-in feature network.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hdit import io, rundir
from hdit.cli import main as cli
from hdit.data import DataError
from hdit.devices import DeviceError, rank_device
from hdit.integrity import DamagedFileError, load_npz, read_record
from hdit.metrics import compute
from hdit.metrics.images import ImageSet, MetricsError
from hdit.profiles import PROFILES
from hdit.sample import sample_run
from hdit.train import train
from test_faults import (ENV, PixelNet, _flip_byte, _images, run, sample_cli, shard_set, shards,  # noqa: F401
                         tiny_e, trained)

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS = Path(__file__).resolve().parent
ENV2 = {**ENV, "PYTHONPATH": f"{ENV['PYTHONPATH']}{os.pathsep}{TESTS}"}


@pytest.fixture
def pixelnet(monkeypatch):
    """`hdit fid` / `hdit refstats` with the stand-in feature network (in this process)."""
    import hdit.metrics.inception

    monkeypatch.setattr(compute, "load_inception", lambda device: PixelNet())
    monkeypatch.setattr(hdit.metrics.inception, "load_inception", lambda device: PixelNet())


def fid(samples, ref, cache, *extra, device: str | None = "cpu") -> list[str]:
    return ["fid", "--samples", str(samples), "--ref", str(ref), "--cache-dir", str(cache), "--quiet", "--kid-subsets",
            "2", "--fid-resamples", "5", *(["--device", device] if device else []), *extra]


def err_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def stop_after(monkeypatch, module, name, calls: int, exc=KeyboardInterrupt):
    """Make module.name raise `exc` on call number `calls + 1` (a job killed there)."""
    real, count = getattr(module, name), []

    def wrapped(*a, **k):
        count.append(1)
        if len(count) > calls:
            raise exc("killed")
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


# ----------------------------------------------------------------------------- complete sets or nothing

def test_unfinished_and_incomplete_sample_sets_are_refused_then_completed(run, tmp_path, capsys, monkeypatch,
                                                                          pixelnet):
    import hdit.sample as S

    ref, out, cache = shard_set(tmp_path / "ref", _images(8, 1)), tmp_path / "s", tmp_path / "c"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        stop_after(mp, S, "sample_batch", 2)  # killed after 2 of 4 shards
        sample_run(run, out, n=8, steps=2, batch_size=2, progress=False)
    assert shards(out) == ["shard-00000.npz", "shard-00001.npz"] and not (out / "meta.json").exists()
    assert cli(fid(out, ref, cache)) == 2
    err = err_of(capsys)
    assert "2 shard(s) but no meta.json, so not a complete set: its writer stopped before the end, .sampling.json" in err
    assert "rerun the `hdit sample`" in err
    assert cli(fid(ref, out, cache)) == 2 and "not a complete set" in err_of(capsys)  # as --ref
    assert cli(["classify", "--samples", str(out), "--out", str(tmp_path / "a.json"), "--cache-dir", str(cache)]) == 2
    assert "not a complete set" in err_of(capsys) and not (tmp_path / "c").exists()  # refused before any classifier
    sample_run(run, out, n=8, steps=2, batch_size=2, progress=False)  # the advice: rerun with the same settings
    assert cli(fid(out, ref, cache, "--format", "json")) == 0
    first = json.loads(capsys.readouterr().out)
    shard2 = (out / "shard-00002.npz").read_bytes()
    (out / "shard-00002.npz").unlink()  # a complete set with one shard deleted, scored without --n
    assert cli(fid(out, ref, cache)) == 2
    err = err_of(capsys)
    assert "1 of the 4 shards meta.json records are missing (shard-00002.npz)" in err and "rerun the `hdit sample`" in err
    sample_run(run, out, n=8, steps=2, batch_size=2, progress=False)
    assert (out / "shard-00002.npz").read_bytes() == shard2  # redrawn from its seed: the same shard
    assert cli(fid(out, ref, cache, "--format", "json")) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == first["fid"]
    shutil.copy(out / "shard-00000.npz", out / "shard-00003.npz")  # a shard replaced by another valid one
    assert cli(fid(out, ref, cache)) == 2
    assert "shard-00003.npz: not the shard meta.json records" in err_of(capsys)


def test_partial_export_is_no_reference_set_until_completed(tmp_path, capsys, monkeypatch, pixelnet):
    import hdit.data
    from hdit.data.cli import export

    real = hdit.data.build_dataset

    def corrupt_second_shard(*a, **k):
        ds = real(*a, **k)
        stop_after(monkeypatch, ds, "get_uint8", 1, exc=lambda m: DataError("x.png: unreadable or corrupt image"))
        return ds

    monkeypatch.setattr(hdit.data, "build_dataset", corrupt_second_shard)
    out = tmp_path / "export"
    with pytest.raises(DataError, match="corrupt image"):
        export("shapes", 32, 6, out, shard_size=2, progress=False)
    assert shards(out) == ["shard-00000.npz"] and (out / ".export.json").exists() and not (out / "meta.json").exists()
    samples, cache = shard_set(tmp_path / "samples", _images(6, 0)), tmp_path / "c"
    for args in (fid(samples, out, cache), fid(out, samples, cache)):  # as --ref and as --samples
        assert cli(args) == 2
        assert "1 shard(s) but no meta.json, so not a complete set: its writer stopped before the end, .export.json" \
            in err_of(capsys)
    monkeypatch.setattr(hdit.data, "build_dataset", real)
    export("shapes", 32, 6, out, shard_size=2, progress=False)  # the advice: the same command completes it
    assert read_record(out / "meta.json", "")["count"] == 6 and not (out / ".export.json").exists()
    assert cli(fid(samples, out, cache)) == 0


def test_samples_of_an_extended_run_are_never_relabelled(run, tmp_path, capsys, pixelnet):
    out, ref = tmp_path / "s", shard_set(tmp_path / "ref", _images(4, 1))
    assert sample_cli(run, out) == 0
    assert read_record(out / "meta.json", "")["checkpoint_step"] == 2
    assert {int(load_npz(out / n)["checkpoint_step"]) for n in shards(out)} == {2}  # each shard names its weights
    train(tiny_e(), run, steps=4, resume=True, checkpoint_every=4, progress=False, device="cpu")  # the run moves on
    (out / "meta.json").write_text("{")
    assert cli(fid(out, ref, tmp_path / "c")) == 2
    err = err_of(capsys)
    assert "meta.json: not a readable JSON record" in err and "delete it and rerun the `hdit sample`" in err
    (out / "meta.json").unlink()  # follow the advice: delete it and rerun the sampler
    old = {n: (out / n).read_bytes() for n in shards(out)}
    with pytest.warns(UserWarning, match=r"2 file\(s\) drawn from other weights of the run \(step 2; it is now at "
                                         r"step 4\) were moved, unchanged, to .*\.superseded-step2"):
        assert sample_cli(run, out) == 0
    assert read_record(out / "meta.json", "")["checkpoint_step"] == 4  # sampled afresh, never relabelled
    assert {int(load_npz(out / n)["checkpoint_step"]) for n in shards(out)} == {4}
    kept = out / ".superseded-step2"
    assert {n: (kept / n).read_bytes() for n in shards(kept)} == old  # the step-2 samples are kept, unchanged
    assert cli(fid(out, ref, tmp_path / "c")) == 0  # and the hidden folder is no part of the set


# ----------------------------------------------------------------------------- finite checkpoints

def test_diverged_training_keeps_the_last_finite_checkpoint(tmp_path, capsys, monkeypatch):
    """lr 1e4 without warm-up: the weights are NaN after update 4 while every loss so far was finite."""
    monkeypatch.setitem(PROFILES, "lr1e4", replace(PROFILES["default"], name="lr1e4", lr=1e4, lr_warmup_steps=0,
                                                  batch_size=2))
    out = tmp_path / "r"
    args = ["train", "--config", "E", "--profile", "lr1e4", "--out", str(out), "--steps", "8", "--checkpoint-every",
            "1", "--log-every", "100", "--no-progress", "--device", "cpu"]
    assert cli(args) == 2
    err = err_of(capsys)
    m = re.search(r"the weights hold NaN/inf at step (\d+) \(model: \d+ of 65 tensors.*the last finite "
                  r"checkpoint, step (\d+), is kept in", err)
    assert m and int(m[2]) == int(m[1]) - 1 and "Lower the learning rate" in err
    ckpt = rundir.load_checkpoint(out)
    assert ckpt["step"] == int(m[2])
    for weights in (ckpt["model"], ckpt["ema"], torch.load(out / "ema.pt", weights_only=False)["ema"]):
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- advice that works

def test_damaged_config_json_of_a_finished_run_is_restored_by_resume(run, tmp_path, capsys):
    (run / "config.json").write_text("{\"config\": ")
    assert sample_cli(run, tmp_path / "s") == 2
    err = err_of(capsys)
    assert "config.json: not a readable JSON record" in err and "remove the damaged file and run `hdit train --resume`" in err
    (run / "config.json").unlink()
    assert sample_cli(run, tmp_path / "s") == 2
    err = err_of(capsys)
    assert "config.json is missing beside the run's weights" in err and "not a trained run" not in err
    with pytest.warns(UserWarning, match="rewrote config.json from checkpoint.pt \\(step 2\\)"):
        done = train(tiny_e(), run, steps=2, resume=True, progress=False, device="cpu")  # the advice
    assert done["step"] == 2 and rundir.read_config(run)["config"] == rundir.load_checkpoint(run)["config"]
    assert sample_cli(run, tmp_path / "s") == 0


def test_damaged_ema_pt_is_rewritten_from_the_checkpoint(trained, run, tmp_path, capsys):
    _flip_byte(run / "ema.pt", (run / "ema.pt").stat().st_size // 2)
    assert sample_cli(run, tmp_path / "s") == 2
    err = err_of(capsys)
    assert "ema.pt: its sha256 differs" in err and "it holds the same EMA weights: run `hdit train --resume`" in err
    with pytest.warns(UserWarning, match="rewrote ema.pt from checkpoint.pt"):
        train(tiny_e(), run, steps=2, resume=True, progress=False, device="cpu")
    assert sample_cli(run, tmp_path / "s") == 0 and sample_cli(trained, tmp_path / "intact") == 0
    for name in shards(tmp_path / "intact"):  # the same weights as the intact run's
        assert np.array_equal(load_npz(tmp_path / "s" / name)["images"], load_npz(tmp_path / "intact" / name)["images"])


def test_garbage_or_missing_checksum_file_is_reported_as_such_and_the_advice_works(run, tmp_path, capsys):
    (run / "ema.pt.sha256").write_text("garbage\n")
    assert sample_cli(run, tmp_path / "s") == 2
    err = err_of(capsys)
    assert "ema.pt.sha256: not a checksum file of ema.pt" in err and "ema.pt itself was not checked" in err
    assert "its sha256 differs" not in err
    subprocess.run(re.search(r"`(cd [^`]+)`", err)[1], shell=True, check=True)  # vouch for the file, as advised
    assert sample_cli(run, tmp_path / "s") == 0
    (run / "checkpoint.pt.sha256").unlink()  # a checkpoint without its checksum is never trusted silently
    with pytest.raises(DamagedFileError, match="checkpoint.pt: has no checksum file checkpoint.pt.sha256") as e:
        train(tiny_e(), run, steps=3, resume=True, progress=False, device="cpu")
    subprocess.run(re.search(r"`(cd [^`]+)`", str(e.value))[1], shell=True, check=True)
    assert train(tiny_e(), run, steps=3, resume=True, progress=False, device="cpu")["step"] == 3
    shard = tmp_path / "s" / "shard-00000.npz"  # an npz re-saved without its checksum
    np.savez(shard, **{k: v for k, v in load_npz(shard).items()})
    with pytest.raises(DamagedFileError, match="shard-00000.npz: not the shard meta.json records"):
        ImageSet(tmp_path / "s")
    with pytest.raises(DamagedFileError, match="has no '__sha256__' checksum"):
        load_npz(shard)


def test_resume_with_fewer_steps_than_trained_is_refused(run):
    import hdit.train as T

    with pytest.MonkeyPatch.context() as mp:  # killed at the step-6 checkpoint: checkpoint 4, config 6, no done
        stop_after(mp, rundir, "check_finite_weights", 1)
        with pytest.raises(KeyboardInterrupt):
            T.train(tiny_e(), run, steps=6, resume=True, checkpoint_every=2, progress=False, device="cpu")
    assert rundir.load_checkpoint(run)["step"] == 4 and not (run / "done.json").exists()
    config = (run / "config.json").read_bytes()
    with pytest.raises(rundir.HarnessError, match="at step 4, beyond --steps 2.*resume with --steps 4 or more"):
        train(tiny_e(), run, steps=2, resume=True, progress=False, device="cpu")
    assert (run / "config.json").read_bytes() == config and not (run / "done.json").exists()
    assert train(tiny_e(), run, steps=4, resume=True, progress=False, device="cpu")["step"] == 4  # the advice


def test_lock_message_names_the_pid_and_the_way_out(run, capsys):
    prog = f"import time\nfrom hdit.runlock import RunLock\nwith RunLock({str(run)!r}, 'hdit train'):\n" \
           "    print('locked', flush=True)\n    time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", prog], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli(["train", "--config", "E", "--out", str(run), "--resume", "--no-progress"]) == 2
        err = err_of(capsys)
        assert f"in use by hdit train (pid {holder.pid}" in err and f"`kill {holder.pid}`" in err
        assert "--rerun-incomplete" in err and "killing snakemake does not stop the jobs" in err
        os.kill(holder.pid, signal.SIGTERM)  # the advice
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=f"taking over the stale lock of hdit train \\(pid {holder.pid}"):
        assert train(tiny_e(), run, steps=2, resume=True, progress=False, device="cpu")["step"] == 2


# ----------------------------------------------------------------------------- output names, write failures

def test_refstats_out_never_collides_with_its_record(tmp_path, capsys, pixelnet):
    base = ["refstats", "--dataset", "shapes", "--resolution", "16", "--n", "6", "--device", "cpu", "--quiet",
            "--cache-dir", str(tmp_path / "c"), "--out"]
    assert cli([*base, str(tmp_path / "x.json")]) == 2
    assert "--out" in (err := err_of(capsys)) and "expected a statistics file name ending in .npz" in err
    assert not list(tmp_path.glob("x*"))
    assert cli([*base, str(tmp_path / "x.npz")]) == 0
    from hdit.metrics.reference import load_stats

    assert load_stats(tmp_path / "x.npz")["n"] == 6 and json.loads((tmp_path / "x.json").read_text())["n"] == 6


def limited(code: str, fsize: int) -> subprocess.CompletedProcess:
    """Run python `code` in a subprocess with a file-size limit (SIGXFSZ ignored: writes fail with EFBIG)."""
    def limit():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-c", code], env=ENV2, capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)


def cli_code(args: list, tiny_default: bool = False) -> str:
    """Python that runs `hdit ARGS` with the stand-in feature network (and E at batch 2 under `default`)."""
    return ("import sys\nfrom dataclasses import replace\nimport hdit.metrics.inception as inc\n"
            "from hdit.metrics import compute\nfrom hdit.profiles import PROFILES\nfrom test_faults import PixelNet\n"
            "compute.load_inception = inc.load_inception = lambda device: PixelNet()\n"
            + ("PROFILES['default'] = replace(PROFILES['default'], batch_size=2)\n" if tiny_default else "")
            + f"from hdit.cli import main\nsys.exit(main({[str(a) for a in args]!r}))\n")


def test_file_size_limit_names_the_file_and_keeps_what_was_finished(run, tmp_path):
    before = (run / "checkpoint.pt").read_bytes()
    r = limited(cli_code(["train", "--config", "E", "--out", run, "--resume", "--steps", "4", "--no-progress",
                          "--device", "cpu"], tiny_default=True), fsize=1 << 20)  # ema.pt is 2 MB
    assert r.returncode == 2 and "Traceback" not in r.stderr and "enforce fail" not in r.stderr, r.stderr
    assert f"cannot write {run / 'ema.pt'}: file too large" in r.stderr
    assert (run / "checkpoint.pt").read_bytes() == before and rundir.load_checkpoint(run)["step"] == 2
    assert not list(run.glob(".*.tmp"))
    samples, ref = shard_set(tmp_path / "s", _images(6, 0)), shard_set(tmp_path / "ref", _images(6, 1))
    out = tmp_path / "m.json"
    r = limited(cli_code(fid(samples, ref, tmp_path / "c", "--out", out)), fsize=1000)  # the result is ~2 kB
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot write {out}: file too large" in r.stderr and "printed above (stdout)" in r.stderr
    assert "the reference statistics are not cached" in r.stderr  # a cache: skipped, not fatal
    assert np.isfinite(json.loads(r.stdout)["fid"]) and not out.exists()


def test_out_below_an_existing_file_is_refused_before_any_work(run, tmp_path, capsys, pixelnet):
    (tmp_path / "f").write_text("keep")
    below = tmp_path / "f" / "sub"
    samples = shard_set(tmp_path / "s", _images(4, 0))
    commands = [["sample", "--run", str(run), "--n", "2", "--out", str(below), "--device", "cpu", "--no-progress"],
                ["train", "--config", "E", "--out", str(below), "--no-progress", "--device", "cpu"],
                fid(samples, samples, tmp_path / "c", "--out", str(below / "m.json")),
                ["refstats", "--dataset", "shapes", "--resolution", "16", "--n", "4", "--out", str(below / "x.npz"),
                 "--cache-dir", str(tmp_path / "c")],
                ["data", "export", "--dataset", "shapes", "--resolution", "16", "--n", "4", "--out", str(below)],
                ["classify", "--samples", str(samples), "--out", str(below / "a.json"), "--cache-dir", str(tmp_path)]]
    for args in commands:
        assert cli(args) == 2, args
        err = err_of(capsys)
        assert str(below) in err and "not a directory" in err.lower(), (args, err)
    assert (tmp_path / "f").read_text() == "keep" and not (tmp_path / "c").exists()


def on_tmpfs(directory: Path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run python `script` in a private mount namespace where `directory` is a fresh `size` tmpfs (root: unshare -m;
    otherwise a user namespace, unshare -rm). Skips where neither exists: the file-size-limit test above covers the
    same code path (a failed write in hdit.io) on every machine."""
    directory.mkdir(parents=True, exist_ok=True)
    mount = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(directory))}"
    for unshare in (["unshare", "-m"], ["unshare", "-rm"]):
        if subprocess.run([*unshare, "sh", "-c", mount], capture_output=True).returncode == 0:
            return subprocess.run([*unshare, "sh", "-c", f'{mount} && exec "$0" -c "$1"', sys.executable, script],
                                  env=ENV2, capture_output=True, text=True, timeout=180)
    pytest.skip("no mount namespace to make a small file system in (unshare -m / -rm both failed)")


def test_full_disk_names_the_file_and_keeps_what_was_finished(run, tmp_path):
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    stats = ["refstats", "--dataset", "shapes", "--resolution", "16", "--n", "6", "--device", "cpu", "--quiet",
             "--cache-dir", str(tmp_path / "c"), "--out"]
    jobs = [["sample", "--run", str(run), "--n", "40", "--batch-size", "2", "--steps", "2", "--out", str(disk / "s"),
             "--device", "cpu", "--no-progress"], [*stats, str(disk / "x.npz")]]
    script = (f"import json, shutil, subprocess, sys\nrs = [subprocess.run([sys.executable, '-c', c], capture_output="
              f"True, text=True) for c in {[cli_code(j) for j in jobs]!r}]\n"
              f"shutil.copytree({str(disk / 's')!r}, {str(kept)!r})\n"
              "print(json.dumps([[r.returncode, r.stderr] for r in rs]))\n")
    r = on_tmpfs(disk, "48k", script)  # room for a few 7 kB shards
    assert r.returncode == 0, r.stderr
    (rc_sample, err_sample), (rc_stats, err_stats) = json.loads(r.stdout)
    assert rc_sample == 2 and "Traceback" not in err_sample, err_sample
    assert re.search(rf"cannot write {re.escape(str(disk / 's'))}/\S+: no space left on the device", err_sample)
    assert shards(kept) and not (kept / "meta.json").exists()
    for name in shards(kept):  # every finished shard verifies
        assert load_npz(kept / name)["images"].shape == (2, 32, 32, 3)
    assert rc_stats == 2 and "Traceback" not in err_stats, err_stats
    assert f"cannot write {disk / 'x.npz'}: no space left on the device" in err_stats
    assert "kept in the cache entry" in err_stats
    r = subprocess.run([sys.executable, "-c", cli_code([*stats, tmp_path / "y.npz"])], env=ENV2, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "(from the cache)" in r.stdout, r.stderr  # the finished statistics were kept


# ----------------------------------------------------------------------------- devices, image files

@pytest.mark.parametrize("device, message", [
    ("tpu", "--device 'tpu'; expected cpu, cuda or cuda:N"),
    ("cuda:x", "--device 'cuda:x'; expected cpu, cuda or cuda:N"),
    ("cuda" if not torch.cuda.is_available() else "cuda:99",
     "torch sees no CUDA device" if not torch.cuda.is_available() else "expected an index below that"),
])
def test_every_command_checks_the_device_alike(run, tmp_path, capsys, pixelnet, device, message):
    samples = shard_set(tmp_path / "s", _images(4, 0))
    commands = [["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "o"), "--no-progress"],
                fid(samples, samples, tmp_path / "c", device=None),
                ["refstats", "--dataset", "shapes", "--resolution", "16", "--n", "4", "--out", str(tmp_path / "x.npz"),
                 "--cache-dir", str(tmp_path / "c")],
                ["train", "--config", "E", "--out", str(tmp_path / "r"), "--no-progress"]]
    for args in commands:
        assert cli([*args, "--device", device]) == 2, args
        assert message in err_of(capsys), args
    assert not any((tmp_path / n).exists() for n in ("o", "c", "r", "x.npz"))


def test_torchrun_rank_device_is_never_silently_replaced(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("cuda", 1, 2) == torch.device("cuda", 1)  # each rank its own GPU
    assert rank_device("cuda:1", 0, 1) == torch.device("cuda", 1)  # one process: the index is honoured
    assert rank_device("cuda:1", 1, 2) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="--device cuda:1 under torchrun, whose rank 0 trains on cuda:0"):
        rank_device("cuda:1", 0, 2)
    with pytest.raises(DeviceError, match="torch sees 2 CUDA device"):
        rank_device("cuda:2", 0, 1)


def png_16bit(path: Path) -> Path:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one; it reads it as 8-bit RGB)."""
    h = w = 32
    rows = b"".join(b"\0" + np.full((w, 3), 40000, ">u2").tobytes() for _ in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_16_bit_rgb_png_is_refused_for_training_and_fid(tmp_path):
    from hdit.data.folders import load_image

    (tmp_path / "fid").mkdir()
    png = png_16bit(tmp_path / "fid" / "deep.png")
    with pytest.raises(DataError, match="deep.png: 16 bits per channel \\(RGB PNG\\); expected 8-bit"):
        load_image(png, 32)
    with pytest.raises(MetricsError, match="deep.png: 16 bits per channel"):
        ImageSet(tmp_path / "fid")


# ----------------------------------------------------------------------------- paths with spaces in the workflow

def test_workflow_quotes_every_path_it_puts_into_a_shell_command(tmp_path):
    """A results folder and a dataset folder whose names hold a space and a non-ASCII character: a real job
    (reference statistics of an ImageNet-layout folder, with the real Inception network) runs, and every command
    of `all` splits into whole paths."""
    import yaml

    root = tmp_path / "wf dir"
    results, data = root / "résultats 1", root / "dätä sets" / "train"
    assert cli(["data", "synth", "--layout", "imagenet", "--classes", "2", "--per-class", "2", "--size", "24x20",
                "--out", str(data)]) == 0
    cfg = yaml.safe_load((TESTS.parent / "workflows/config/default.yaml").read_text())
    cfg.update(results=str(results), datasets={**cfg["datasets"], "imagenet": {"path": str(data), "reference_n": 4}})
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    target = results / "refs/default/imagenet-16.fid-stats.npz"

    def snakemake(*args):
        return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(TESTS.parent / "Snakefile"), "--directory",
                               str(root), *args, "--configfile", str(root / "config.yaml")], cwd=root, env=ENV,
                              capture_output=True, text=True, timeout=300)

    r = snakemake("-n", "-p", "all", str(target))
    assert r.returncode == 0, r.stderr
    commands = [line.split("Shell command: ", 1)[1] for line in r.stdout.splitlines() if "Shell command: " in line]
    assert len(commands) > 50
    for command in commands:
        words = shlex.split(command)
        assert not [w for w in words if w.endswith(("résultats", "dätä"))], command  # no path split at its space
        assert not [w for w in words if w.count(str(root)) > 1], command  # nor two paths quoted as one word
    assert any(f"--data {shlex.quote(str(data))}" in c for c in commands)
    r = snakemake("--cores", "1", str(target))
    assert r.returncode == 0, r.stderr
    from hdit.metrics.reference import load_stats

    assert load_stats(target)["n"] == 4 and (results / "logs/default/fid/reference-imagenet-16.log").is_file()
    assert not [p for p in root.iterdir() if p.name not in ("résultats 1", "dätä sets", "config.yaml", ".snakemake")]


def test_a_failed_log_append_names_the_log(tmp_path):
    """log.csv is appended, not replaced: its write failure must still name the file and the cause (exit 2)."""
    from hdit.io import WriteError
    from hdit.train import _append_log

    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=r"cannot write .*file/log\.csv: not a directory"):
        _append_log(tmp_path / "file" / "log.csv", {"step": 1, "loss": 1.0})
