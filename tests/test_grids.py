"""Sample grids and training curves (`hdit.report.grids`, `hdit.report.curves`, `hdit report grid|curves`):
fixed classes in a fixed order, equal counts in every row, reference row first, shared runs drawn once."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hdit.data.shapes import ShapesDataset, scene_labels
from hdit.integrity import DamagedFileError, write_set_record
from hdit.io import save_npz, write_text
from hdit.report import curves, grids


def sample_dir(path, labels, size=8, shard=5):
    """A fake `hdit sample` output: image i is solid grey (i + 1) (so a cell tells which sample it shows)."""
    labels = np.asarray(labels, np.int64)
    images = np.stack([np.full((size, size, 3), i + 1, np.uint8) for i in range(len(labels))])
    for k in range(0, len(labels), shard):
        save_npz(path / f"shard-{k // shard:05d}.npz", images=images[k:k + shard], labels=labels[k:k + shard])
    write_set_record(path, {"n": len(labels)}, -(-len(labels) // shard))  # the set's record, written last
    return path


def shown(rows):
    return [[int(img[0, 0, 0]) - 1 for img in row] for row in rows]


@pytest.fixture
def two_sets(tmp_path):
    a = sample_dir(tmp_path / "a", [3, 1, 1, 0, 3, 2, 0, 1, 3, 3, 0, 2])  # classes 0..3; 2 has two samples
    b = sample_dir(tmp_path / "b", [1, 0, 0, 1, 2, 3, 3, 0, 1, 2, 5, 5])  # class 5 only here
    return {"R1": a, "E": b}


def test_an_incomplete_set_is_refused_by_name(tmp_path):
    """A killed sampler's directory (shards, no meta.json) or a set missing a shard is never drawn into a grid."""
    path = sample_dir(tmp_path / "s", [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2], shard=4)
    (path / "shard-00001.npz").unlink()
    with pytest.raises(DamagedFileError, match=r"1 of the 3 shards meta.json records are missing \(shard-00001.npz\)"):
        grids.SampleSet.open(path)
    (path / "meta.json").unlink()
    with pytest.raises(DamagedFileError, match="no meta.json, so not a complete set"):
        grids.SampleSet.open(path)


def test_classes_are_common_ascending_and_have_enough_samples(two_sets, tmp_path):
    sets = [grids.SampleSet.open(p) for p in two_sets.values()]
    assert grids.choose_classes(sets, per_class=2, classes=10) == ([0, 1, 2, 3], 2)
    assert grids.choose_classes(sets, per_class=3, classes=10) == ([0, 1], 3)  # 2: two samples in a; 3: two in b
    assert grids.choose_classes(sets, per_class=1, classes=2) == ([0, 1], 1)
    # no label is that frequent in every set: fewer per label, the same in every row
    assert grids.choose_classes(sets, per_class=9, classes=10) == ([0, 1], 3)
    other = grids.SampleSet.open(sample_dir(tmp_path / "other", [7, 8, 9]))
    with pytest.raises(ValueError, match="no class label is common"):
        grids.choose_classes([*sets, other], per_class=2, classes=10)


def test_rows_have_equal_counts_and_the_same_class_order(two_sets):
    dataset = ShapesDataset(8)
    rows, frame, labels = grids.grid_rows(two_sets, dataset, per_class=2, classes=10)
    assert labels == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [len(r) for r in rows] == [8, 8, 8]
    # each row: the first two samples of each class, in sample order
    assert shown(rows[1:]) == [[3, 6, 1, 2, 5, 11, 0, 4], [1, 2, 0, 3, 4, 9, 5, 6]]
    # the reference row: the first training images of those classes, in the same order
    ref = frame[frame.row == "reference"]
    assert scene_labels(ref["index"].to_numpy(), 0, "train").tolist() == labels
    for key in ("R1", "E"):
        picked = frame[frame.row == key]
        stored = grids.SampleSet.open(two_sets[key]).labels[picked["index"].to_numpy()]
        assert stored.tolist() == labels == picked.label.tolist()


def test_unconditional_sets_show_their_first_samples(tmp_path):
    sets = {"small": sample_dir(tmp_path / "s", [-1] * 6), "full": sample_dir(tmp_path / "f", [-1] * 9)}
    rows, frame, labels = grids.grid_rows(sets, ShapesDataset(8), per_class=2, classes=3)
    assert labels == [-1] * 6 and shown(rows[1:]) == [list(range(6))] * 2
    assert frame[frame.row == "reference"]["index"].tolist() == list(range(6))
    # at most as many as the smallest set holds
    rows, _, labels = grids.grid_rows(sets, ShapesDataset(8), per_class=5, classes=3)
    assert len(labels) == 6 and {len(r) for r in rows} == {6}
    with pytest.raises(ValueError, match="mix"):
        grids.grid_rows({"a": sets["small"], "b": sample_dir(tmp_path / "c", [0, 1, 0, 1])}, ShapesDataset(8))


def test_tile_refuses_ragged_rows():
    img = np.zeros((2, 4, 4, 3), np.uint8)
    assert grids.tile([img, img], scale=2, pad=1).shape == (2 * 9 + 1, 2 * 9 + 1, 3)
    with pytest.raises(ValueError, match="same count"):
        grids.tile([img, img[:1]])


def test_render_grid_writes_png_and_csv(two_sets, tmp_path):
    out = [tmp_path / "g" / "grid.png", tmp_path / "g" / "grid.csv"]
    paths = grids.render_grid(two_sets, ShapesDataset(8), out, "Table 1, samples. default: shapes 8px")
    assert paths == out and Image.open(out[0]).size[0] > 200
    frame = pd.read_csv(out[1])
    assert len(frame) == 3 * 8 and frame.groupby("grid_row").size().nunique() == 1
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["grid.csv", "grid.png"]  # no temporaries


def log(path, steps, loss, speed=10.0):
    rows = "".join(f"{s},{l},0.001,{speed},{s}\n" for s, l in zip(steps, loss))
    write_text(path / "log.csv", "step,loss,lr,img_per_s,elapsed_s\n" + rows)
    return path / "log.csv"


def test_curves_smooth_and_draw_a_shared_run_once(tmp_path):
    e = log(tmp_path / "E", [10, 20, 30, 40], [1.0, 0.5, 0.5, 0.25])
    d = log(tmp_path / "D", [10, 20], [2.0, 1.0], speed=5.0)
    df = curves.curves_frame({"skip-lerp": e, "softminsnr-g4": e, "snr": d}, smooth=3)
    assert df.label.unique().tolist() == ["skip-lerp = softminsnr-g4 (run E)", "snr (run D)"]
    smooth = df[df.label == "snr (run D)"].loss_smooth.tolist()
    assert smooth == pytest.approx([2.0, (1.0 + 0.5 * 2.0) / 1.5])  # EMA, span 3 (alpha 0.5), adjusted
    paths = curves.render_curves({"E": e, "D": d}, [tmp_path / "c.png", tmp_path / "c.csv"], "Table 5, curves")
    assert all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="no training log"):
        curves.curves_frame({"E": tmp_path / "missing" / "log.csv"})


def _report(*args):
    return subprocess.run([sys.executable, "-m", "hdit.cli", "report", *args], capture_output=True, text=True)


def test_cli_grid_and_curves(tmp_path):
    a = sample_dir(tmp_path / "a", [0, 1, 2, 0, 1, 2], size=32)  # the default profile's 32 px shapes
    b = sample_dir(tmp_path / "b", [2, 1, 0, 0, 1, 2], size=32)
    sets = {"skip-concat": a, "skip-add": b, "skip-lerp": b}
    out = tmp_path / "grid-table2.png"
    r = _report("grid", "2", "--profile", "default", "--samples", *[f"{k}={v}" for k, v in sets.items()],
                "--out", str(out), str(out.with_suffix(".csv")))
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(out.with_suffix(".csv")).row.unique().tolist() == ["reference", *sets]
    bad = _report("grid", "2", "--profile", "default", "--samples", f"E={tmp_path / 'nothing'}", "--out", str(out))
    assert bad.returncode == 2 and "not a directory" in bad.stderr and "Traceback" not in bad.stderr
    logs = log(tmp_path / "run", [10, 20], [1.0, 0.9])
    r = _report("curves", "2", "--profile", "default", "--logs", f"skip-lerp={logs}", "--out", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert all((tmp_path / f"c.{ext}").exists() for ext in ("png", "pdf", "csv"))  # a prefix: all three
