"""Embedded shapes dataset, image folders (ADM centre crop, errors), batch stream, `hdit data export`."""
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from hdit.cli import main as cli
from hdit.configs import DataConfig
from hdit.data import BatchStream, DataError, build_dataset
from hdit.data import shapes
from hdit.data.folders import center_crop_arr, ffhq, imagenet, load_image
from hdit.data.subset import select_subset, selection_digest


# ----------------------------------------------------------------------------- shapes

def test_shapes_are_a_pure_function_of_seed_split_index():
    a, la = shapes.render(range(20), 32)
    b, lb = shapes.render([7, 3], 32)
    assert np.array_equal(a[[7, 3]], b) and np.array_equal(la[[7, 3]], lb)
    c, _ = shapes.render(range(20), 32, seed=1)
    d, _ = shapes.render(range(20), 32, split="test")
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.dtype == np.uint8 and a.shape == (20, 32, 32, 3) and la.dtype == np.int64
    # pinned: the hash -> parameter mapping must not drift (it defines the FID reference set)
    assert la[:8].tolist() == [0, 3, 4, 9, 9, 1, 5, 9]
    with pytest.raises(ValueError, match="split='val'"):
        shapes.render([0], 32, split="val")


def test_shapes_same_scene_at_every_resolution():
    lo, l1 = shapes.render(range(16), 32)
    hi, l2 = shapes.render(range(16), 128)
    pooled = hi.reshape(16, 32, 4, 32, 4, 3).astype(np.float64).mean((2, 4))
    assert np.array_equal(l1, l2)
    assert np.abs(pooled - lo).mean() < 1.0  # mean abs difference below one grey level
    assert np.abs(pooled - lo).max() < 80  # only anti-aliased edge pixels differ


def test_shapes_classes_and_colours():
    imgs, labels = shapes.render(range(2000), 32)
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 150  # all ten classes, roughly uniform
    p = shapes.scene_params(range(2000))
    # the shape's colour shows at its centre pixel (every shape covers it except the ring)
    cx = ((p["centre"][:, 0] + 1) / 2 * 32).astype(int)
    cy = ((1 - p["centre"][:, 1]) / 2 * 32).astype(int)
    centre = imgs[np.arange(2000), cy, cx].astype(float) / 255
    solid = labels % 5 != 4
    orange, blue = solid & (labels < 5), solid & (labels >= 5)
    assert (centre[orange, 0] > centre[orange, 2] + 0.4).all() and (centre[blue, 2] > centre[blue, 0] + 0.4).all()
    assert shapes.class_name(3) == "orange plus" and shapes.class_name(9) == "blue ring"


@pytest.mark.parametrize("k,area", [(0, np.pi), (1, 2.0), (2, 3 * np.sqrt(3) / 4), (3, 20 / 9), (4, np.pi * 5 / 9)])
def test_shape_sdfs_are_exact(k, area):
    """Area inside the zero level set matches the closed form; |grad d| = 1 (a true distance)."""
    r = 0.5
    n = 801
    c = np.linspace(-1, 1, n)
    py, px = np.meshgrid(c, c, indexing="ij")
    d = shapes._SDFS[k](px[None], py[None], np.array(r).reshape(1, 1, 1))[0]
    h = c[1] - c[0]
    assert (d < 0).sum() * h * h == pytest.approx(area * r * r, rel=0.01)
    gy, gx = np.gradient(d, h)
    g = np.hypot(gx, gy)[2:-2, 2:-2]
    assert np.median(np.abs(g - 1)) < 1e-4  # unit gradient almost everywhere (exact SDF)
    assert np.mean(np.abs(g - 1) < 1e-3) > 0.95


def test_shapes_dataset_and_speed():
    ds = build_dataset(DataConfig("shapes", 32))
    assert ds.num_classes == 10 and len(ds) == shapes.SPLIT_SIZES["train"]
    x, y = ds.get_batch([0, 1, 2])
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    u8, _ = shapes.render([0, 1, 2], 32)
    assert torch.equal(((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1), torch.from_numpy(u8))
    t = time.process_time()  # CPU time: a loaded machine slows the wall clock, not this
    shapes.render(range(1000), 32)
    assert time.process_time() - t < 3.0  # hundreds to thousands of images per CPU-second


# ----------------------------------------------------------------------------- folders

def test_adm_center_crop():
    # 256 x 256 -> 64: two BOX halvings (2x2 means), no bicubic change, no crop
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = center_crop_arr(Image.fromarray(arr), 64)
    box = arr.reshape(64, 4, 64, 4, 3).astype(float).mean((1, 3))
    # PIL's integer BOX filter rounds half up: each halving adds at most +1 (mean +0.5)
    assert out.shape == (64, 64, 3) and -0.5 < (out - box).min() and (out - box).max() < 2.0
    # 512 x 256 (W x H), left half black / right half white -> the centre crop straddles the edge
    wide = np.zeros((256, 512, 3), np.uint8)
    wide[:, 256:] = 255
    out = center_crop_arr(Image.fromarray(wide), 64)
    assert out.shape == (64, 64, 3)
    assert (out[:, :31] == 0).all() and (out[:, 33:] == 255).all()


def _write(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_imagenet_folder(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path / "train" / "n02" / "a.JPEG", rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    _write(tmp_path / "train" / "n01" / "b.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    _write(tmp_path / "train" / "n01" / "c.png", rng.integers(0, 256, (70, 90), dtype=np.uint8))  # greyscale ok
    ds = imagenet(tmp_path, 32, split="train")
    assert ds.classes == ["n01", "n02"] and len(ds) == 3 and ds.num_classes == 2
    x, y = ds.get_batch([0, 1, 2])
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 0, 1] and -1 <= x.min() and x.max() <= 1
    d = build_dataset(DataConfig("imagenet", 32), tmp_path)
    assert len(d) == 3
    f = ffhq(tmp_path / "train", 16)
    assert len(f) == 3 and f.num_classes == 0


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        imagenet(tmp_path / "nowhere", 32)
    with pytest.raises(DataError, match="--data"):
        build_dataset(DataConfig("imagenet", 32), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        imagenet(tmp_path / "empty", 32)
    bad = tmp_path / "bad" / "n01" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg.*corrupt"):
        imagenet(tmp_path / "bad", 32).get_batch([0])
    rgba = tmp_path / "rgba" / "n01" / "alpha.png"
    _write(rgba, np.zeros((40, 40, 4), np.uint8), "RGBA")
    with pytest.raises(DataError, match="alpha.png.*RGBA.*4 channels"):
        load_image(rgba, 32)
    with pytest.raises(DataError, match="dataset 'cifar'"):
        build_dataset(DataConfig("cifar", 32))


# ----------------------------------------------------------------------------- batch stream

def test_batch_stream_is_resumable_and_sharded():
    ds = shapes.ShapesDataset(8, size=50)
    a = BatchStream(ds, 4, seed=3)
    first = [next(a) for _ in range(30)]  # 120 samples = 2.4 epochs
    b = BatchStream(ds, 4, seed=3, start_step=17)
    assert all(torch.equal(x, y) for x, y in zip(next(b), first[17]))
    # every epoch is a permutation of the dataset
    keys = np.concatenate([a.keys(s) for s in range(25)])
    assert sorted(keys[:50]) == list(range(50)) and sorted(keys[50:100]) == list(range(50))
    # ranks take disjoint slices of the same global stream
    r0, r1 = BatchStream(ds, 2, seed=3, rank=0, world_size=2), BatchStream(ds, 2, seed=3, rank=1, world_size=2)
    assert np.array_equal(np.concatenate([r0.keys(5), r1.keys(5)]), a.keys(5))
    assert b.state_dict()["step"] == 18


# ----------------------------------------------------------------------------- export CLI

def test_data_export_cli(tmp_path, capsys):
    out = tmp_path / "ref"
    assert cli(["data", "export", "--dataset", "shapes", "--resolution", "16", "--n", "25", "--split", "train",
                "--shard-size", "10", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["meta.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    images = np.concatenate([np.load(out / f"shard-{k:05d}.npz")["images"] for k in range(3)])
    labels = np.concatenate([np.load(out / f"shard-{k:05d}.npz")["labels"] for k in range(3)])
    meta = json.loads((out / "meta.json").read_text())
    # a seeded class-stratified subset of the million training scenes, not the first 25 indices
    indices, _ = select_subset(shapes.ShapesDataset(16).labels(), 1_000_000, 25, 0)
    assert meta["selection"]["indices_sha256"] == selection_digest(indices) and indices.max() > 1000
    ref, ref_labels = shapes.render(indices, 16)
    assert np.array_equal(images, ref) and np.array_equal(labels, ref_labels) and labels.dtype == np.int64
    assert sorted(np.bincount(labels, minlength=10)) == [2] * 5 + [3] * 5  # 25 images over 10 classes
    # the same settings again: nothing to do; other settings into the same folder: refused, nothing mixed
    assert cli(["data", "export", "--dataset", "shapes", "--resolution", "16", "--n", "25", "--shard-size", "10",
                "--out", str(out)]) == 0
    assert cli(["data", "export", "--dataset", "shapes", "--resolution", "16", "--n", "30", "--shard-size", "10",
                "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "n: 25 -> 30" in err
    assert len(list(out.glob("shard-*.npz"))) == 3
    assert cli(["data", "export", "--dataset", "imagenet", "--resolution", "16", "--n", "5", "--out",
                str(tmp_path / "x")]) == 2
    assert "--data" in capsys.readouterr().err
