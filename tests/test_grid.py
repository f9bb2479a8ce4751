"""Sample grids (`hdit.grid`): layout, class rows sorted by label, atomic PNG write, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hdit.grid import grid_image, main, pick_samples, save_grid
from hdit.io import save_npz


def solid(value: int, size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


@pytest.fixture
def samples(tmp_path):
    """Two shards; image i is solid grey 10 * i, labels out of order."""
    labels = np.array([2, 0, 1, 0, 2, 5, 0, 1, 2], np.int64)
    images = np.stack([solid(10 * i) for i in range(len(labels))])
    save_npz(tmp_path / "s" / "shard-00000.npz", images=images[:5], labels=labels[:5])
    save_npz(tmp_path / "s" / "shard-00001.npz", images=images[5:], labels=labels[5:])
    return tmp_path / "s", labels


def values(rows):
    return [[int(img[0, 0, 0]) // 10 for img in row] for row in rows]


def test_class_conditional_rows_sorted_by_label(samples):
    directory, labels = samples
    rows = pick_samples(directory, columns=2)
    # label 0: images 1, 3 (6 dropped: 2 columns); label 1: 2, 7; label 2: 0, 4; label 5: 5
    assert values(rows) == [[1, 3], [2, 7], [0, 4], [5]]
    assert values(pick_samples(directory, columns=3, classes=[2, 1])) == [[2, 7], [0, 4, 8]]
    assert values(pick_samples(directory, columns=3, max_rows=2)) == [[1, 3, 6], [2, 7]]


def test_unconditional_samples_fill_rows_in_order(tmp_path):
    save_npz(tmp_path / "u" / "shard-00000.npz", images=np.stack([solid(10 * i) for i in range(7)]),
             labels=np.zeros(7, np.int64))
    assert values(pick_samples(tmp_path / "u", columns=3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_grid_pixels_and_png(samples, tmp_path):
    directory, _ = samples
    out = save_grid(directory, tmp_path / "figs" / "grid.png", columns=2, scale=3, pad=1)
    png = np.asarray(Image.open(out))
    cell = 4 * 3 + 1
    assert png.shape == (4 * cell + 1, 2 * cell + 1, 3)
    np.testing.assert_array_equal(png, grid_image(pick_samples(directory, columns=2), scale=3, pad=1))
    # row 1 (label 1), column 1 holds image 7 (grey 70), upscaled 3x
    np.testing.assert_array_equal(png[1 + cell: 1 + cell + 12, 1 + cell: 1 + cell + 12], 70)
    assert png[0, 0, 0] == 255  # padding
    assert png[1 + 3 * cell + 5, 1 + cell + 5, 0] == 255  # label 5 has one sample: empty cell
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["grid.png"]  # no temporary left behind


def test_errors(tmp_path, samples, capsys):
    directory, _ = samples
    with pytest.raises(ValueError, match="not a directory"):
        save_grid(tmp_path / "missing", tmp_path / "g.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .npz shards"):
        save_grid(tmp_path / "empty", tmp_path / "g.png")
    with pytest.raises(ValueError, match="classes \\[7\\]"):
        pick_samples(directory, classes=[0, 7])
    with pytest.raises(ValueError, match="columns=0"):
        pick_samples(directory, columns=0)
    assert main(["--samples", str(tmp_path / "empty"), "--out", str(tmp_path / "g.png")]) == 2
    assert "no .npz shards" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()
