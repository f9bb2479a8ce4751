"""FID reference statistics of a training split (ADM protocol): whole split or a seeded class-stratified
subset, streamed from the dataset, resumable, cached by key; `hdit data export` takes the same subsets."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hdit.cli import main as cli
from hdit.data.subset import STRATIFIED, WHOLE_SPLIT, select_subset
from hdit.integrity import DamagedFileError, write_set_record
from hdit.io import save_npz
from hdit.metrics import compute
from hdit.metrics import reference as R
from hdit.metrics.images import MetricsError

CLASSES = 1000


def class_colour(k: int) -> tuple[int, int, int]:
    """A solid colour per class (a constant image survives the ADM crop and resize unchanged)."""
    return (k % 10 * 25, k // 10 % 10 * 25, k // 100 * 25)


class ClassNet:
    """Stand-in for the Inception network whose features are a one-hot of the image's class colour, so the
    statistics say exactly which classes went into them (mu[k] = share of class k)."""
    sha256, path, classifier = "class-colour-test-net", "class-colour", None

    def __init__(self):
        self.calls = 0

    def to(self, device):
        return self

    def features(self, x, mode):
        self.calls += 1
        rgb = x[:, :, 0, 0].round().long() // 25  # [B, 3]
        k = rgb[:, 0] + 10 * rgb[:, 1] + 100 * rgb[:, 2]
        return torch.nn.functional.one_hot(k, 2048).float()


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    """ImageNet layout with 1000 class folders of 2 non-square images each."""
    root = tmp_path_factory.mktemp("imagenet") / "train"
    for k in range(CLASSES):
        d = root / f"n{k:08d}"
        d.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (24, 20), class_colour(k)).save(d / f"n{k:08d}_{i}.png")
    return root


def stats(folder, n, tmp_path, **kw):
    spec = R.ReferenceSpec("imagenet", 16, str(folder), n=n)
    return R.dataset_reference_stats(spec, ClassNet(), "legacy_tensorflow", tmp_path / "cache", "cpu", batch_size=64,
                                     workers=0, verbose=False, **kw)


def test_every_class_contributes_to_the_reference_statistics(imagenet_folder, tmp_path):
    whole = stats(imagenet_folder, None, tmp_path)
    assert whole["n"] == 2 * CLASSES and whole["meta"]["selection"]["how"] == WHOLE_SPLIT
    np.testing.assert_allclose(whole["mu"][:CLASSES], 1 / CLASSES)  # 2 images of each of the 1000 classes
    sub = stats(imagenet_folder, CLASSES, tmp_path)
    sel = sub["meta"]["selection"]
    assert sel["how"] == STRATIFIED and sel["classes_represented"] == CLASSES and sel["per_class_max"] == 1
    np.testing.assert_allclose(sub["mu"][:CLASSES], 1 / CLASSES)  # one image of every class, none twice
    small = stats(imagenet_folder, 250, tmp_path)  # fewer images than classes: 250 random classes
    shares = small["mu"][:CLASSES]
    assert (shares > 0).sum() == 250 and np.allclose(shares[shares > 0], 1 / 250)
    assert np.flatnonzero(shares).max() > 900  # not the first classes of the sorted listing
    keys = {s["meta"]["key"] for s in (whole, sub, small)}
    assert len(keys) == 3  # other selections never share a cache entry


def test_cached_statistics_are_reused_and_recorded(imagenet_folder, tmp_path):
    first = stats(imagenet_folder, 100, tmp_path)
    assert first["cached"] is False and not list((tmp_path / "cache").glob("*.partial.npz"))
    again = stats(imagenet_folder, 100, tmp_path)
    assert again["cached"] is True and np.array_equal(again["sigma"], first["sigma"])
    meta = again["meta"]
    assert meta["spec"]["n"] == 100 and meta["selection"]["seed"] == 0 and meta["identity"]["classes"] == CLASSES
    assert len(meta["content_sha256"]) == 64 and meta["mode"] == "legacy_tensorflow"


def test_killed_computation_resumes_to_the_same_statistics(tmp_path, monkeypatch):
    spec = R.ReferenceSpec("shapes", 16, n=48)
    net = ClassNet()
    kw = dict(device="cpu", batch_size=8, workers=0, checkpoint_every=2, verbose=False)
    original = net.features

    def dies_on_batch_4(x, mode):
        if net.calls == 3:
            raise KeyboardInterrupt  # the job is killed while the 4th batch is processed
        return original(x, mode)

    monkeypatch.setattr(net, "features", dies_on_batch_4)
    with pytest.raises(KeyboardInterrupt):
        R.dataset_reference_stats(spec, net, "legacy_tensorflow", tmp_path / "a", **kw)
    partial = list((tmp_path / "a").glob("*.partial.npz"))
    assert len(partial) == 1 and int(np.load(partial[0])["batches"]) == 2
    monkeypatch.setattr(net, "features", original)
    net.calls = 0
    resumed = R.dataset_reference_stats(spec, net, "legacy_tensorflow", tmp_path / "a", **kw)
    assert net.calls == 4  # batches 3..6 only
    fresh = R.dataset_reference_stats(spec, ClassNet(), "legacy_tensorflow", tmp_path / "b", **kw)
    for k in ("mu", "sigma", "kid_feats"):
        assert np.array_equal(resumed[k], fresh[k]), k
    assert resumed["meta"]["content_sha256"] == fresh["meta"]["content_sha256"]
    assert not list((tmp_path / "a").glob("*.partial.npz"))


def test_fid_reads_a_statistics_file_and_refuses_another_mode(imagenet_folder, tmp_path):
    s = stats(imagenet_folder, 100, tmp_path)
    path = tmp_path / "ref.npz"
    R.write_stats(path, s)
    samples = tmp_path / "samples"
    samples.mkdir()
    images = np.stack([np.full((16, 16, 3), class_colour(k), np.uint8) for k in range(0, 1000, 100)])
    save_npz(samples / "shard-00000.npz", images=images, labels=np.arange(10))
    write_set_record(samples, {"n": 10}, 1)
    out = compute.compute_metrics(samples, path, n=10, net=ClassNet(), device="cpu", verbose=False, kid_subsets=2)
    assert out["ref_stats_key"] == s["meta"]["key"] and out["ref_n"] == 100 and np.isfinite(out["fid"])
    assert out["ref_selection"]["how"] == STRATIFIED
    with pytest.raises(MetricsError, match="mode 'legacy_tensorflow'.*'clean'"):
        compute.compute_metrics(samples, path, n=10, mode="clean", net=ClassNet(), device="cpu", verbose=False)
    path.write_bytes(b"not a zip")
    with pytest.raises(DamagedFileError, match="ref.npz: not a readable FID statistics file.*hdit refstats"):
        compute.compute_metrics(samples, path, n=10, net=ClassNet(), device="cpu", verbose=False)


def test_export_of_a_class_folder_is_a_stratified_subset(imagenet_folder, tmp_path):
    out = tmp_path / "export"
    assert cli(["data", "export", "--dataset", "imagenet", "--data", str(imagenet_folder), "--resolution", "16",
                "--n", "1000", "--shard-size", "400", "--out", str(out)]) == 0
    labels = np.concatenate([np.load(p)["labels"] for p in sorted(out.glob("shard-*.npz"))])
    assert sorted(labels.tolist()) == list(range(CLASSES))  # every class once, not the first 500 classes twice
    assert json.loads((out / "meta.json").read_text())["selection"]["how"] == STRATIFIED


def test_subset_allocation_is_proportional_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    idx, rec = select_subset(labels, 100, 50, seed=3)
    assert np.bincount(labels[idx]).tolist() == [5, 10, 15, 20] and rec["per_class_min"] == 5
    assert np.array_equal(idx, select_subset(labels, 100, 50, seed=3)[0])
    assert not np.array_equal(idx, select_subset(labels, 100, 50, seed=4)[0])
    with pytest.raises(ValueError, match="n=101 exceeds the 100 images"):
        select_subset(labels, 100, 101)


def test_refstats_cli_errors(tmp_path, capsys):
    assert cli(["refstats", "--dataset", "imagenet", "--resolution", "16", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--data" in capsys.readouterr().err
    assert cli(["refstats", "--dataset", "shapes", "--resolution", "16", "--n", "0",
                "--out", str(tmp_path / "x.npz")]) == 2
    assert "--n 0" in capsys.readouterr().err
