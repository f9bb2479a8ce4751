"""`hdit data prepare` and the prepared split (issue 24): the same pixels as decoding the folder, the same trainer
batches and reference statistics, resumable, damaged chunks and changed sources refused by name, the DAG."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hdit.cli import main as cli
from hdit.configs import DataConfig
from hdit.data import BatchStream, DataError, PreparedDataset, build_dataset, to_model_input
from hdit.data.folders import imagenet, load_image
from hdit.data.prepare import prepare
from hdit.data.prepared import SourceChangedError
from hdit.integrity import DamagedFileError
from hdit.metrics import reference as R

ROOT = Path(__file__).resolve().parent.parent
RES = 32


def _photo(rng, w, h):
    """Smooth colour fields plus noise: JPEG/PNG files of photo-like size, and crops that resampling changes."""
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.int16)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


SIZES = ((90, 70), (64, 80), (150, 100), (40, 33))


def _folder(root, classes=4, per_class=6, seed=0, sizes=SIZES):
    """ImageNet layout: non-square JPEGs and PNGs of several sizes (some > 2x the crop: BOX halvings), one grey."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        d = root / f"n{k:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[(k + i) % len(sizes)]
            img = Image.fromarray(_photo(rng, w, h))
            if i == 5:
                img.convert("L").save(d / f"{i}.png")
            else:
                img.save(d / f"{i}.JPEG" if i % 2 else d / f"{i}.png", quality=90)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("imagenet") / "train")


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "imagenet-32"
    assert cli(["data", "prepare", "--dataset", "imagenet", "--data", str(source), "--resolution", str(RES),
                "--out", str(out), "--chunk-images", "5", "--workers", "2", "--quiet"]) == 0
    return out


def _chunks(out):
    import json

    return [c["sha256"] for c in json.loads((out / "manifest.json").read_text())["chunks"]]


def test_prepared_pixels_are_load_image_bit_for_bit(source, prepared):
    raw, ds = imagenet(source, RES), build_dataset(DataConfig("imagenet", RES), prepared)
    assert isinstance(ds, PreparedDataset) and len(ds) == len(raw) == 24 and len(_chunks(prepared)) == 5
    images, labels = ds.get_uint8(np.arange(len(ds))[::-1])
    for j, i in enumerate(range(len(ds) - 1, -1, -1)):
        assert np.array_equal(images[j], load_image(raw.files[i][0], RES)), raw.files[i][0]
    assert labels[::-1].tolist() == [k for _, k in raw.files] and ds.num_classes == 4 and ds.resolution == RES
    assert ds.identity() == raw.identity() and np.array_equal(ds.labels(), raw.labels())


def test_trainer_reads_a_prepared_split_with_one_worker(source, prepared):
    """A prepared split is a memmap read: one loader worker by default, not the raw folders' decoding pool."""
    from hdit.data.shapes import ShapesDataset
    from hdit.train import default_workers

    assert default_workers(PreparedDataset(prepared)) == 1 and default_workers(ShapesDataset(16, split="train")) == 0
    assert default_workers(imagenet(source, RES)) == min(8, os.cpu_count() or 1)


@pytest.mark.parametrize("workers", [0, 1])
def test_trainer_batches_from_prepared_equal_raw(source, prepared, workers):
    """BatchStream yields uint8 NHWC; the trainer's float batch (to_model_input) is the same from either."""
    raw = BatchStream(imagenet(source, RES), 7, seed=1, num_workers=workers)
    prep = BatchStream(PreparedDataset(prepared), 7, seed=1, num_workers=workers)
    for step in range(5):  # 35 samples: across an epoch boundary
        (a, la), (b, lb) = next(raw), next(prep)
        assert a.dtype == torch.uint8 and a.shape == (7, RES, RES, 3) and torch.equal(a, b) and torch.equal(la, lb)
        x = to_model_input(b)
        assert x.dtype == torch.float32 and x.shape == (7, 3, RES, RES) and x.is_contiguous()
        assert torch.equal(x, b.permute(0, 3, 1, 2).float() / 127.5 - 1)  # the [-1, 1] scaling, as always
        assert torch.equal(x, imagenet(source, RES).get_batch(raw.keys(step))[0])


def test_training_on_prepared_equals_raw(source, prepared, tmp_path, one_thread):
    """Two steps of E (with the non-leaking augmentation on) on the raw folder and on the prepared split: the
    same weights bit for bit, so the device-side conversion and the augmentation see the same pixels."""
    from hdit.profiles import resolve
    from hdit.train import train

    run = resolve("E", "default")
    run = replace(run, data=DataConfig("imagenet", RES), model=replace(run.model, num_classes=4),
                  train=replace(run.train, batch_size=4, augment_prob=0.5))
    kw = dict(steps=2, checkpoint_every=2, workers=0, progress=False)
    train(run, tmp_path / "raw", data_path=source, **kw)
    train(run, tmp_path / "prep", data_path=prepared, **kw)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("raw", "prep"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


class PixelNet:
    """A stand-in feature network whose features are the pixels themselves (2048 of them)."""
    sha256, path, classifier = "pixel-test-net", "pixels", None

    def to(self, device):
        return self

    def features(self, x, mode):
        return x.reshape(x.shape[0], -1)[:, :2048].double()


def test_reference_statistics_from_prepared_equal_raw(source, prepared, tmp_path):
    got = {}
    for name, data in (("raw", source), ("prep", prepared)):
        spec = R.ReferenceSpec("imagenet", RES, str(data), n=12)
        got[name] = R.dataset_reference_stats(spec, PixelNet(), "legacy_tensorflow", tmp_path / name, "cpu",
                                              batch_size=5, workers=0, verbose=False)
    a, b = got["raw"], got["prep"]
    assert np.array_equal(a["mu"], b["mu"]) and np.array_equal(a["sigma"], b["sigma"]) and a["n"] == b["n"] == 12
    assert a["meta"]["content_sha256"] == b["meta"]["content_sha256"] and a["meta"]["key"] == b["meta"]["key"]


def _reference(source, tmp_path):
    out = tmp_path / "uninterrupted"
    prepare("imagenet", source, RES, out, chunk_images=2, workers=1, progress=False)
    return _chunks(out)


def _photo_folder(root, n):
    """`n` photo-sized JPEGs (~10 ms each to decode and crop: time to kill a prepare mid-way), each marked apart."""
    base = _photo(np.random.default_rng(5), 1000, 750)
    for i in range(n):
        img = base.copy() if i % 2 else base.transpose(1, 0, 2).copy()
        img[300:450, 300:450] = (i * 4, 255 - i * 4, i * 7 % 256)  # inside the centre crop
        (root / f"n{i % 3:08d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"n{i % 3:08d}" / f"{i}.JPEG", quality=90)
    return root


def test_killed_prepare_resumes_to_the_same_result(source, tmp_path):
    big = _photo_folder(tmp_path / "big", 60)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hdit.cli", "data", "prepare", "--dataset", "imagenet", "--data", str(big),
           "--resolution", str(RES), "--out", str(out), "--chunk-images", "2", "--workers", "2", "--quiet"]
    p = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while len(list(out.glob("chunk-*.sha256"))) < 3 and p.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(p.pid, signal.SIGKILL)  # its two workers are orphaned: they finish their chunk, then exit
    p.wait()
    assert not (out / "manifest.json").exists() and (out / "plan.json").exists()
    # what else a kill can leave: a half-written temporary, a chunk renamed before its checksum was written
    (out / ".chunk-00005.npy.x1y2z3.tmp").write_bytes(b"half")
    np.save(out / "chunk-00006.npy", np.zeros((2, RES, RES, 3), np.uint8))
    with pytest.warns(UserWarning, match="temporary"):  # the lock is free at once: the workers let go of it
        prepare("imagenet", big, RES, out, chunk_images=2, workers=1, progress=False)
    reference = _reference(big, tmp_path)
    assert _chunks(out) == reference and len(set(reference)) == 30 and not list(out.glob("*.tmp"))
    # simulated: the manifest and one chunk gone -> the same result again
    (out / "manifest.json").unlink()
    (out / "chunk-00003.npy").unlink()
    prepare("imagenet", big, RES, out, chunk_images=2, workers=2, progress=False)
    assert _chunks(out) == reference


def test_damaged_chunk_is_refused_by_name_and_repaired(source, prepared, tmp_path, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(prepared, out)
    chunk = out / "chunk-00002.npy"
    data = bytearray(chunk.read_bytes())
    data[-100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    export = ["data", "export", "--dataset", "imagenet", "--data", str(out), "--resolution", str(RES), "--out",
              str(tmp_path / "export")]
    assert cli(export) == 2
    err = capsys.readouterr().err
    assert f"{chunk} differs from the sha256 recorded in manifest.json" in err and "rerun `hdit data prepare`" in err
    (out / "chunk-00004.npy").write_bytes(b"short")
    with pytest.raises(DamagedFileError, match=r"chunk-00004.npy has 5 bytes"):
        PreparedDataset(out)
    (out / "labels.npy").write_bytes(b"")
    with pytest.warns(UserWarning, match="3 file\\(s\\) do not verify"):
        prepare("imagenet", source, RES, out, chunk_images=5, workers=1, progress=False)
    assert _chunks(out) == _chunks(prepared) and cli(export) == 0


def test_changed_source_is_refused_then_replaced(source, prepared, tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "prep"
    shutil.copytree(source, src)
    args = ["data", "prepare", "--dataset", "imagenet", "--data", str(src), "--resolution", str(RES), "--out",
            str(out), "--chunk-images", "5", "--workers", "1", "--quiet"]
    assert cli(args) == 0 and _chunks(out) == _chunks(prepared)  # a copy of the folder: the same pixels
    Image.fromarray(_photo(np.random.default_rng(9), 50, 40)).save(src / "n00000001" / "new.png")
    os.utime(src / "n00000002" / "1.JPEG", ns=(1, 1))
    with pytest.raises(SourceChangedError, match=r"1 added \(n00000001/new.png\); 1 rewritten .*n00000002/1.JPEG"):
        PreparedDataset(out)  # training and refstats open it: refused
    assert cli(args) == 2  # prepare again: refused by name, nothing mixed
    err = capsys.readouterr().err
    assert "source folder" in err and "1 added (n00000001/new.png)" in err and "--replace" in err
    assert cli([*args, "--replace"]) == 0  # redone from the changed source
    ds = PreparedDataset(out)
    assert len(ds) == 25 and np.array_equal(ds.get_uint8([12])[0][0], load_image(src / "n00000001" / "new.png", RES))
    assert cli([*args[:7], "16", *args[8:]]) == 2  # another resolution into the same folder
    assert "resolution: 32 -> 16" in capsys.readouterr().err
    import hdit.data.prepare as P  # another Pillow (or crop code) would resample differently: never mixed

    current = P.preprocessing()
    monkeypatch.setattr(P, "preprocessing", lambda: {**current, "pillow": "0.1"})
    assert cli(args) == 2 and f"preprocessing.pillow: '{current['pillow']}' -> '0.1'" in capsys.readouterr().err


def test_prepared_split_must_match_what_is_asked(source, prepared, tmp_path):
    with pytest.raises(DataError, match=r"is imagenet prepared at 32 px .*expected imagenet at 64 px"):
        build_dataset(DataConfig("imagenet", 64), prepared)
    with pytest.raises(DataError, match="expected ffhq at 32 px"):
        build_dataset(DataConfig("ffhq", RES), prepared)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds files that are not a prepared dataset"):
        prepare("imagenet", source, RES, tmp_path / "other")
    with pytest.raises(DataError, match="'shapes'.*needs no preparation"):
        prepare("shapes", None, RES, tmp_path / "x")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(prepared, unfinished)
    (unfinished / "manifest.json").unlink()
    with pytest.raises(DataError, match="unfinished `hdit data prepare`"):
        build_dataset(DataConfig("imagenet", RES), unfinished)


def _dry_run(tmp_path, prepared_on):
    cfg = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())
    (tmp_path / "imagenet" / "n01440764").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ffhq").mkdir(exist_ok=True)
    (tmp_path / "ffhq" / "00000.png").write_bytes(b"")
    for name in ("imagenet", "ffhq"):
        cfg["datasets"][name].update(path=str(tmp_path / name), prepared=prepared_on)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                        "-n", "-p", "all", "--configfile", str(tmp_path / "c.yaml")], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_dag_prepares_once_per_dataset_and_resolution(tmp_path):
    out = _dry_run(tmp_path, True)
    prep = sorted(re.findall(r"hdit data prepare --dataset (\S+) --data \S+ --resolution (\d+)", out))
    assert prep == [("ffhq", "1024"), ("imagenet", "128"), ("imagenet", "256")]
    data = set(re.findall(r"hdit(?:\.cli)? (?:train|refstats) .*?--data (\S+)", out))
    assert data == {"results/prepared/imagenet-128", "results/prepared/imagenet-256", "results/prepared/ffhq-1024"}
    raw = _dry_run(tmp_path, False)  # a user who does not prepare: the raw folders, no prepare job
    assert "hdit data prepare" not in raw
    assert set(re.findall(r"hdit(?:\.cli)? (?:train|refstats) .*?--data (\S+)", raw)) == {str(tmp_path / "imagenet"),
                                                                                   str(tmp_path / "ffhq")}


def test_loader_benchmark_records_both_paths(tmp_path):
    """`hdit bench-loader` end to end at a small size (its figures are results/bench/loader-cpu.json)."""
    import json

    out = tmp_path / "loader.json"
    assert cli(["bench-loader", "--resolutions", "128", "--images", "10", "--batch", "5", "--seconds", "0.05",
                "--out", str(out), "--workdir", str(tmp_path)]) == 0
    rec = json.loads(out.read_text())
    r = rec["results"][0]
    assert r["resolution"] == 128 and r["source"]["images"] == 10 and r["prepared_bytes"] == 10 * 49152 + 128
    assert r["raw_img_s"] > 0 and r["prepared_img_s"] > 0 and [p["png_level"] for p in r["png_alternatives"]] == [0, 6]
    assert rec["node_estimate"]["E-128"]["img_s_per_node"] == 16000 and "cpu" in rec["machine"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("hdit-loader-")]  # generated folders removed
