"""Faults a user of a long-running harness meets (issue 11: nothing silently wrong). Each test creates the fault,
asserts the message (what is wrong, which file, what to do) and exit code 2, and that nothing finished was lost.

Real models on CPU at the smallest size (default profile, E, batch 2, 2 steps); a stand-in feature network for
FID, whose numbers are not the point here.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hdit import io, rundir
from hdit.cli import main as cli
from hdit.data import BatchStream, DataError
from hdit.data.folders import imagenet, load_image
from hdit.errors import error_text
from hdit.imagefile import list_images
from hdit.integrity import DamagedFileError, load_npz, read_record, write_record, write_set_record
from hdit.metrics import compute
from hdit.metrics import reference as R
from hdit.metrics.images import ImageSet, MetricsError, list_shards
from hdit.profiles import resolve
from hdit.runlock import RunLock, RunLockedError
from hdit.sample import DivergedSamplesError, sample_run
from hdit.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def tiny_e():
    run = resolve("E", "default")
    return replace(run, train=replace(run.train, batch_size=2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("trained") / "E"
    train(tiny_e(), out, steps=2, checkpoint_every=2, progress=False, device="cpu")
    torch.set_num_threads(n)
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run (tests damage it)."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def sample_cli(run_dir, out, *extra):
    return cli(["sample", "--run", str(run_dir), "--n", "4", "--batch-size", "2", "--steps", "2", "--out", str(out),
                "--no-progress", "--device", "cpu", *extra])


def shards(directory) -> list[str]:
    return sorted(p.name for p in Path(directory).glob("shard-*.npz"))


def killed_during_rename(code: str, target: str) -> None:
    """Run `code` (after `import hdit.io as io`) in a process that SIGKILLs itself at the atomic rename onto a
    file named `target`: the write is complete in its temporary, which a killed job leaves behind."""
    prog = ("import os, signal\nimport hdit.io as io\nreplace = os.replace\n"
            f"os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL) if str(b).endswith({target!r}) "
            "else replace(a, b)\n" + code)
    r = subprocess.run([sys.executable, "-c", prog], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr


# ----------------------------------------------------------------------------- non-finite / diverged samples

@pytest.mark.parametrize("weights, message", [
    ("all", "sample values are non-finite"),  # huge weights everywhere: the network returns NaN (all-black before)
    ("patch_out", "beyond 1000 (targets have unit variance"),  # huge output layer: finite, far out of range
])
def test_diverged_checkpoint_stops_sampling_and_writes_nothing(run, tmp_path, capsys, weights, message):
    """A diverged checkpoint (finite but huge weights): the job stops at the first shard, writing nothing."""
    ckpt = torch.load(run / "ema.pt", weights_only=False)
    scale, prefix = (1e8, "") if weights == "all" else (1e6, "patch_out.")
    ckpt["ema"] = {k: v * scale if v.is_floating_point() and k.startswith(prefix) else v
                   for k, v in ckpt["ema"].items()}
    io.torch_save(ckpt, run / "ema.pt")
    out = tmp_path / "samples"
    assert sample_cli(run, out) == 2
    err = capsys.readouterr().err
    assert f"run {run} (checkpoint step 2), shard 0" in err and message in err and "diverged" in err
    assert "Traceback" not in err and shards(out) == [] and not (out / "meta.json").exists()


def test_non_finite_batch_writes_nothing_and_keeps_finished_shards(run, tmp_path, monkeypatch):
    import hdit.sample as S

    real, calls = S.sample_batch, []

    def nan_second_batch(*args, **kw):
        x, labels = real(*args, **kw)
        calls.append(1)
        return (x * float("nan") if len(calls) == 2 else x), labels

    monkeypatch.setattr(S, "sample_batch", nan_second_batch)
    out = tmp_path / "s"
    with pytest.raises(DivergedSamplesError, match=r"checkpoint step 2\), shard 1 .*non-finite.*nothing was written"):
        sample_run(run, out, n=6, steps=2, batch_size=2, progress=False)
    assert shards(out) == ["shard-00000.npz"] and not (out / "meta.json").exists()
    first = load_npz(out / "shard-00000.npz")["images"]
    monkeypatch.setattr(S, "sample_batch", real)
    sample_run(run, out, n=6, steps=2, batch_size=2, progress=False)  # resumes: the same set as in one go
    sample_run(run, tmp_path / "ref", n=6, steps=2, batch_size=2, progress=False)
    assert np.array_equal(load_npz(out / "shard-00000.npz")["images"], first)
    for name in shards(tmp_path / "ref"):
        assert np.array_equal(load_npz(out / name)["images"], load_npz(tmp_path / "ref" / name)["images"])


@pytest.mark.parametrize("args, message", [
    (["--cfg-scale", "nan"], "--cfg-scale nan; expected a finite number >= 0"),
    (["--cfg-scale", "inf"], "--cfg-scale inf"),
    (["--cfg-scale", "-2"], "--cfg-scale -2.0"),
    (["--seed", "-1"], "--seed -1; expected an integer >= 0"),
    (["--batch-size", "0"], "--batch-size 0"),
])
def test_sampler_arguments_are_checked_before_any_model(trained, tmp_path, capsys, monkeypatch, args, message):
    import hdit.backbones

    monkeypatch.setattr(hdit.backbones, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    assert sample_cli(trained, tmp_path / "o", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_ddpm_step_count_is_checked_before_any_model(tmp_path, capsys, monkeypatch):
    import hdit.backbones

    monkeypatch.setattr(hdit.backbones, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    r1 = tmp_path / "r1"
    write_record(r1 / "config.json", {"config": resolve("R1", "default").to_dict(), "profile": "default", "seed": 0})
    (r1 / "checkpoint.pt").write_bytes(b"never read")
    assert sample_cli(r1, tmp_path / "o", "--steps", "1500") == 2
    assert "--steps 1500; R1 samples with DDPM, whose diffusion has 1000 steps" in capsys.readouterr().err


# ----------------------------------------------------------------------------- interrupted writes

def test_killed_sampling_write_is_never_read_and_is_removed_on_resume(run, tmp_path, capsys):
    out = tmp_path / "s"
    sample_run(run, out, n=4, steps=2, batch_size=2, progress=False)
    complete = load_npz(out / "shard-00001.npz")["images"]
    (out / "shard-00001.npz").unlink()  # the job "was killed" while writing shard 1: no meta.json yet
    (out / "meta.json").rename(out / ".sampling.json")
    killed_during_rename(f"import numpy as np\nio.save_npz({str(out / 'shard-00001.npz')!r}, "
                         "images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, np.int64))", "shard-00001.npz")
    left = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".shard-00001.npz.")  # hidden, and not *.npz
    assert [p.name for p in list_shards(out)] == ["shard-00000.npz"]
    with pytest.raises(DamagedFileError, match="1 shard\\(s\\) but no meta.json, so not a complete set"):
        ImageSet(out)  # an unfinished set is no set (issue 25)
    with pytest.warns(UserWarning, match="removed 1 temporary file"):
        sample_run(run, out, n=4, steps=2, batch_size=2, progress=False)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")] and len(ImageSet(out)) == 4
    assert np.array_equal(load_npz(out / "shard-00001.npz")["images"], complete)


def test_killed_checkpoint_write_keeps_the_finished_checkpoint(run):
    before = (run / "checkpoint.pt").read_bytes()
    killed_during_rename(f"io.torch_save({{'step': 99}}, {str(run / 'checkpoint.pt')!r})", "/checkpoint.pt")
    assert len(list(run.glob(".checkpoint.pt.*.tmp"))) == 1
    assert (run / "checkpoint.pt").read_bytes() == before
    assert rundir.load_checkpoint(run)["step"] == 2  # still verifies: both digests are recorded meanwhile
    with open(run / "log.csv", "a") as f:
        f.write("1")  # and a log row cut short by the kill (a row "12,..." after its first digit)
    with pytest.warns(UserWarning, match="removed 1 temporary file"):
        done = train(tiny_e(), run, steps=3, resume=True, checkpoint_every=3, progress=False, device="cpu")
    assert done["step"] == 3 and not list(run.glob("*.tmp"))
    assert len((run / "checkpoint.pt.sha256").read_text().splitlines()) == 1
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "3"] and all(None not in r.values() and r["loss"] for r in rows)


# ----------------------------------------------------------------------------- one writer per directory

def test_second_writer_exits_naming_the_holder_and_a_dead_holder_is_taken_over(run, tmp_path, capsys):
    out = tmp_path / "samples"
    prog = (f"import sys, time\nfrom hdit.runlock import RunLock\nwith RunLock({str(run)!r}, 'hdit train'), "
            f"RunLock({str(out)!r}, 'hdit sample'):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", prog], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc = cli(["train", "--config", "E", "--out", str(run), "--resume", "--steps", "2", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and f"is in use by hdit train (pid {holder.pid} on host " in err and "Traceback" not in err
        assert sample_cli(run, out) == 2
        assert f"in use by hdit sample (pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with pytest.warns(UserWarning, match=f"taking over the stale lock of hdit train \\(pid {holder.pid}"):
        done = train(tiny_e(), run, steps=2, resume=True, progress=False, device="cpu")
    assert done["step"] == 2 and not (run / ".lock").exists()


def test_lock_in_one_process_refuses_a_second_holder(tmp_path):
    with RunLock(tmp_path / "d", "hdit train"):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}.*only one process may write it"):
            RunLock(tmp_path / "d", "hdit train").acquire()
    with RunLock(tmp_path / "d", "hdit train"):  # released: free again, without a stale-lock warning
        pass


def test_checkpoint_of_another_run_is_refused(run, capsys):
    """config.json of seed 1 beside the weights of seed 0 (two trainers raced): resume and sampling refuse."""
    record = rundir.read_config(run)
    record["seed"] = record["config"]["train"]["seed"] = 1
    write_record(run / "config.json", record)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(rundir.RunMismatchError, match="train.seed: 1 in config.json but 0 in checkpoint.pt"):
        train(tiny_e(), run, steps=4, resume=True, seed=1, progress=False, device="cpu")
    assert sample_cli(run, run.parent / "s") == 2
    assert "train.seed: 1 in config.json but 0 in ema.pt" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before


# ----------------------------------------------------------------------------- damaged files

def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault, message", [
    ("truncated", "ema.pt: its sha256 differs from the one recorded in ema.pt.sha256"),
    ("truncated-no-checksum", "ema.pt: has no checksum file ema.pt.sha256"),  # never trusted without (issue 25)
    ("empty", "ema.pt: empty file (0 bytes)"),
    ("flipped", "ema.pt: its sha256 differs"),
    ("config-corrupt", "config.json: not a readable JSON record"),
    ("config-edited", "config.json: its content differs from the checksum recorded when it was written"),
])
def test_damaged_run_files_name_the_file_and_the_fix(run, tmp_path, capsys, fault, message):
    ckpt, cfg = run / "ema.pt", run / "config.json"  # ema.pt: the weights sampling reads
    if fault.startswith("truncated"):
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        if fault.endswith("no-checksum"):
            io.checksum_path(ckpt).unlink()
    elif fault == "empty":
        ckpt.write_bytes(b"")
    elif fault == "flipped":
        _flip_byte(ckpt, ckpt.stat().st_size // 2)  # inside the weights: torch would load it silently
    elif fault == "config-corrupt":
        cfg.write_text(cfg.read_text()[:100])
    else:
        # a hand edit of the resolved config after the run was written: the learning rate doubled
        edited = re.sub(r'"lr": ([0-9.e-]+)', lambda m: f'"lr": {2 * float(m[1])!r}', cfg.read_text(), count=1)
        assert edited != cfg.read_text() and json.loads(edited)
        cfg.write_text(edited)
    assert sample_cli(run, tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert ("train again" if fault.startswith(("trunc", "empty", "flip")) else "--resume") in err


def test_damaged_done_and_config_json_are_fixed_as_the_message_says(run, capsys):
    (run / "done.json").write_text("{\"step\": 2, ")
    assert cli(["train", "--config", "E", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "done.json: not a readable JSON record" in err and "remove it and run `hdit train --resume`" in err
    (run / "done.json").unlink()
    (run / "config.json").write_text("")
    with pytest.raises(DamagedFileError, match="config.json.*remove the damaged file and run `hdit train --resume`"):
        train(tiny_e(), run, steps=2, resume=True, progress=False, device="cpu")
    (run / "config.json").unlink()
    done = train(tiny_e(), run, steps=2, resume=True, progress=False, device="cpu")  # checked against the ckpt
    assert done["step"] == 2 and rundir.load_checkpoint(run)["step"] == 2
    assert read_record(run / "config.json", "")["seed"] == 0 and read_record(run / "done.json", "")["step"] == 2


class PixelNet:
    """Stand-in for the Inception network: the first 2048 pixel values are the features."""
    sha256, path, classifier = "pixel-test-net", "pixels", None

    def to(self, device):
        return self

    def features(self, x, mode):
        f = x.flatten(1).float()
        return torch.nn.functional.pad(f, (0, max(0, 2048 - f.shape[1])))[:, :2048]


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def shard_set(directory: Path, *images: np.ndarray) -> Path:
    """A complete shard set as the writers leave it: one shard per array, then meta.json with the shard list."""
    for k, batch in enumerate(images):
        io.save_npz(directory / f"shard-{k:05d}.npz", images=batch, labels=np.zeros(len(batch), np.int64))
    write_set_record(directory, {"n": sum(map(len, images))}, len(images))
    return directory


def test_damaged_shard_and_png_stop_fid_naming_the_file(tmp_path, capsys, monkeypatch):
    samples, ref = shard_set(tmp_path / "samples", _images(4, 0)), shard_set(tmp_path / "ref", _images(4, 1))
    shard = samples / "shard-00000.npz"
    _flip_byte(shard, shard.stat().st_size // 2)  # inside the image bytes: a bad CRC
    monkeypatch.setattr(compute, "load_inception", lambda device: PixelNet())
    args = ["fid", "--samples", str(samples), "--ref", str(ref), "--cache-dir", str(tmp_path / "c"), "--quiet",
            "--device", "cpu", "--kid-subsets", "2"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"{shard}: not a readable .npz file (BadZipFile: Bad CRC-32" in err and "Traceback" not in err
    assert "`hdit sample` redraws the same shard" in err
    png = tmp_path / "png"
    png.mkdir()
    for i, img in enumerate(_images(3, 2)):
        Image.fromarray(img).save(png / f"{i}.png")
    (png / "1.png").write_bytes((png / "1.png").read_bytes()[:200])
    assert cli([*args[:2], str(png), *args[3:]]) == 2
    err = capsys.readouterr().err
    assert f"{png / '1.png'}: unreadable or corrupt image" in err and "Traceback" not in err


def test_foreign_npz_and_temporaries_in_a_sample_dir(tmp_path):
    d = shard_set(tmp_path / "s", _images(2, 0))
    (d / ".shard-00001.npz.k2j4.tmp").write_bytes(b"half")  # a killed writer's temporary: skipped
    assert len(ImageSet(d)) == 2
    np.savez(d / "extra.npz", images=_images(3, 1))
    with pytest.raises(MetricsError, match="extra.npz: not a shard name"):
        ImageSet(d)


def test_damaged_cached_statistics_are_recomputed(tmp_path):
    samples, ref, cache = shard_set(tmp_path / "samples", _images(6, 0)), shard_set(tmp_path / "ref", _images(6, 1)), \
        tmp_path / "cache"
    kw = dict(net=PixelNet(), device="cpu", verbose=False, kid_subsets=2, cache_dir=cache)
    first = compute.compute_metrics(samples, ref, **kw)
    entry = Path(first["ref_stats_path"])
    entry.write_bytes(entry.read_bytes()[:1000])  # a truncated cache entry
    with pytest.warns(UserWarning, match="damaged cache entry.*recomputed"):
        again = compute.compute_metrics(samples, ref, **kw)
    assert again["fid"] == first["fid"] and again["ref_stats_cached"] is False
    assert compute.compute_metrics(samples, ref, **kw)["ref_stats_cached"] is True
    for k in range(3):  # a training split in ImageNet layout: 3 classes x 4 images
        (tmp_path / "train" / f"n{k}").mkdir(parents=True)
        for i, img in enumerate(_images(4, k)):
            Image.fromarray(img).save(tmp_path / "train" / f"n{k}" / f"{i}.png")
    spec = R.ReferenceSpec("imagenet", 16, str(tmp_path / "train"))
    stats_kw = dict(device="cpu", batch_size=4, workers=0, verbose=False, checkpoint_every=2)
    fresh = R.dataset_reference_stats(spec, PixelNet(), "legacy_tensorflow", tmp_path / "a", **stats_kw)
    key = fresh["meta"]["key"]
    (tmp_path / "a" / f"{key}.npz").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "a" / f"{key}.partial.npz").write_bytes(b"")  # and a damaged partial file of a killed job
    with pytest.warns(UserWarning) as caught:
        redone = R.dataset_reference_stats(spec, PixelNet(), "legacy_tensorflow", tmp_path / "a", **stats_kw)
    assert any("damaged cache entry" in str(w.message) for w in caught)
    assert any(".partial.npz" in str(w.message) and "computed from the start" in str(w.message) for w in caught)
    assert np.array_equal(redone["mu"], fresh["mu"]) and np.array_equal(redone["sigma"], fresh["sigma"])
    assert not (tmp_path / "a" / f"{key}.partial.npz").exists()


# ----------------------------------------------------------------------------- image rules, folders, bad input

def test_one_set_of_image_rules_for_training_and_fid(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    ok = _images(1, 0)[0]
    Image.fromarray(ok).save(folder / "a.png")
    Image.fromarray(ok).save(folder / ".hidden.png")  # hidden files are never images of the set
    (folder / ".ipynb_checkpoints").mkdir()
    Image.fromarray(ok).save(folder / ".ipynb_checkpoints" / "a.png")
    assert [p.name for p in list_images(folder)] == ["a.png"] and len(ImageSet(folder)) == 1
    bad = {"deep.png": Image.fromarray(np.full((32, 32), 40000, np.uint16)),  # 16-bit greyscale
           "alpha.png": Image.fromarray(np.zeros((32, 32, 4), np.uint8), "RGBA"),
           "tiny.png": Image.fromarray(ok[:1, :1])}
    for name, im in bad.items():
        im.save(tmp_path / name)
        with pytest.raises(DataError, match=name):
            load_image(tmp_path / name, 32)
        sub = tmp_path / f"fid-{name}"
        sub.mkdir()
        im.save(sub / name)
        with pytest.raises(MetricsError, match=name):
            ImageSet(sub)


def test_class_folders_empty_and_hidden(tmp_path):
    root = tmp_path / "train"
    for c in ("n01", "n03", ".cache"):
        (root / c).mkdir(parents=True)
        Image.fromarray(_images(1, 0)[0]).save(root / c / "x.png")
    (root / "n02").mkdir()
    with pytest.raises(DataError, match="class folder\\(s\\) 'n02' hold no images"):
        imagenet(root, 16)
    (root / "n02").rmdir()
    assert imagenet(root, 16).classes == ["n01", "n03"]  # .cache is not a class


def test_truncated_png_in_a_data_loader_worker_names_the_file(tmp_path):
    root = tmp_path / "train"
    (root / "n01").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_images(1, i)[0]).save(root / "n01" / f"{i}.png")
    (root / "n01" / "1.png").write_bytes((root / "n01" / "1.png").read_bytes()[:150])
    stream = BatchStream(imagenet(root, 16), 2, num_workers=1)
    with pytest.raises(DataError) as e:
        next(stream)
    assert "Traceback" in str(e.value)  # torch wraps a worker's error ...
    text = error_text(e.value)  # ... the command line prints only the original message
    assert text.startswith(f"{root / 'n01' / '1.png'}: unreadable or corrupt image") and "Traceback" not in text


def test_bad_training_input_fails_before_the_model(tmp_path, capsys, monkeypatch):
    import hdit.backbones

    monkeypatch.setattr(hdit.backbones, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    assert cli(["train", "--config", "E", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "--data" in (err := capsys.readouterr().err) and "'shapes'" in err and "drop --data" in err
    (tmp_path / "file").write_text("x")
    assert cli(["train", "--config", "E", "--out", str(tmp_path / "file")]) == 2
    assert "file is an existing file; expected a directory" in capsys.readouterr().err
    assert cli(["train", "--config", "E", "--seed", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "--seed -1" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"

