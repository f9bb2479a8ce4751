"""Evaluation: FID / KID / IS, the offline Inception network, reference-stats cache, `hdit fid`.

Tests that run the real Inception network on CPU keep to a few dozen 32 px images.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from hdit import cli
from hdit.data.shapes import render
from hdit.integrity import write_set_record
from hdit.io import save_npz
from hdit.metrics import compute, refstats, scores
from hdit.metrics.features import iter_features, open_images
from hdit.metrics.images import ImageSet, MetricsError, content_hash
from hdit.metrics.inception import (ENV_PATH, PACKAGED_SHA256, ExtractorError, load_inception, packaged_path,
                                    sha256_file, tf_resize_bilinear)
from hdit.metrics.scores import (Moments, fid_label, frechet_distance, inception_score,
                                 kernel_inception_distance)

def write_shard(directory: Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    labels = np.zeros(len(images), np.int64) if labels is None else labels
    save_npz(directory / "shard-00000.npz", images=images, labels=labels)
    return record_set(directory)


def record_set(directory: Path) -> Path:
    """meta.json with the shard list, as `hdit sample` writes it last (a reader takes exactly those shards)."""
    write_set_record(directory, {}, len(list(directory.glob("shard-*.npz"))))
    return directory


def shapes(n: int, split: str = "train") -> np.ndarray:
    """The first n images of the embedded `shapes` dataset at 32 px."""
    return render(np.arange(n), 32, 0, split)[0]


def noisy(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, std, images.shape)
    return np.clip(images + noise, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def net():
    return load_inception("cpu", env={})


# ----------------------------------------------------------------------------- scores (no network)

def reference_fid(f1, f2):
    """Independent Frechet distance: numpy moments + scipy.linalg.sqrtm."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def moments(feats, batch=37):
    m = Moments(feats.shape[1])
    for i in range(0, len(feats), batch):
        m.update(feats[i:i + batch])
    return m.mean_cov()


def test_fid_label():
    assert [fid_label(n) for n in (50_000, 1000, 500, 1500, 5000)] == [
        "FID-50k", "FID-1k", "FID-500", "FID-1500", "FID-5k"]


def test_streaming_moments_match_numpy():
    f = np.random.default_rng(0).normal(2.0, 1.5, (301, 16))
    mu, sigma = moments(f)
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-12)


def test_fid_of_features_against_themselves_is_zero():
    f = np.random.default_rng(1).gamma(2.0, 0.3, (400, 64))
    mu, sigma = moments(f)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_matches_scipy_frechet_distance():
    rng = np.random.default_rng(2)
    f1 = rng.normal(0, 1, (500, 64)) @ rng.normal(0, 0.3, (64, 64))
    f2 = rng.normal(0.2, 1, (600, 64)) @ rng.normal(0, 0.3, (64, 64))
    ours = frechet_distance(*moments(f1), *moments(f2))
    expected = reference_fid(f1, f2)
    assert expected > 1.0
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_fid_with_singular_covariances_matches_clean_fid():
    """Fewer samples than dimensions (FID-500 in 2048-d): same value as clean-fid's sqrtm-based one."""
    from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

    rng = np.random.default_rng(5)
    f1, f2 = rng.gamma(2.0, 0.3, (40, 64)), rng.gamma(2.3, 0.3, (50, 64))
    stats = [*moments(f1), *moments(f2)]
    assert frechet_distance(*stats) == pytest.approx(cleanfid_frechet_distance(*stats), rel=1e-5)
    assert abs(frechet_distance(*stats[:2], *stats[:2])) < 1e-9


def test_frechet_distance_rejects_non_finite_covariance():
    mu, sigma = np.zeros(4), np.eye(4)
    bad = sigma.copy()
    bad[1, 2] = np.nan
    with pytest.raises(MetricsError, match="non-finite values in sigma2"):
        frechet_distance(mu, sigma, mu, bad)
    with pytest.raises(MetricsError, match="at least 2 samples"):
        Moments(4).mean_cov()


def test_kid_is_clean_fid_unbiased_estimator():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(3)
    a, b = rng.gamma(2, 0.3, (120, 32)), rng.gamma(2.5, 0.3, (120, 32))
    # one subset of the whole sets: both estimators are deterministic (order does not matter)
    assert kernel_inception_distance(a, b, subsets=1, subset_size=120) == pytest.approx(
        kernel_distance(a, b, num_subsets=1, max_subset_size=120), rel=1e-9)
    same = kernel_inception_distance(a[:60], a[60:], subsets=20)
    assert abs(same) < 0.2 * kernel_inception_distance(a, b, subsets=20)


def test_inception_score_uniform_is_one_and_balanced_one_hot_is_class_count():
    assert inception_score(np.full((100, 1008), 1 / 1008)) == pytest.approx((1.0, 0.0), abs=1e-12)
    one_hot = np.eye(10)[np.arange(200) % 10]  # every split holds each class equally often
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(MetricsError, match="N >= splits"):
        inception_score(one_hot[:5], splits=10)


# ----------------------------------------------------------------------------- TF-style resize

def tf1_resize_numpy(img: np.ndarray, size: int) -> np.ndarray:
    """TF1 ResizeBilinear(align_corners=False), written pixel by pixel from its definition."""
    h, w = img.shape[:2]
    out = np.empty((size, size, img.shape[2]))
    for i in range(size):
        y = i * h / size
        y0, fy = int(y), y - int(y)
        y1 = min(y0 + 1, h - 1)
        for j in range(size):
            x = j * w / size
            x0, fx = int(x), x - int(x)
            x1 = min(x0 + 1, w - 1)
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_tf_resize_matches_tf1_definition_and_nvidia_grid_sample():
    img = shapes(1)[0].astype(np.float64)
    x = torch.from_numpy(img.transpose(2, 0, 1))[None].float()
    ours = tf_resize_bilinear(x)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, tf1_resize_numpy(img, 299), atol=1e-3)
    # NVIDIA's formulation inside inception-2015-12-05.pt: shifted affine grid + border grid_sample
    theta = torch.tensor([[[1, 0, 1 / 32 - 1 / 299], [0, 1, 1 / 32 - 1 / 299]]], dtype=torch.float64)
    grid = torch.nn.functional.affine_grid(theta, [1, 3, 299, 299], align_corners=False)
    nv = torch.nn.functional.grid_sample(x.double(), grid, "bilinear", "border", align_corners=False)
    np.testing.assert_allclose(ours, nv[0].permute(1, 2, 0).numpy(), atol=1e-3)


def test_tf_resize_is_not_half_pixel_resize():
    """TF1's legacy resize subsamples on exact 2x reduction (no averaging), unlike clean-fid's
    `legacy_pytorch` resizer (PyTorch bilinear, half-pixel centres)."""
    from cleanfid.resize import build_resizer

    img = np.random.default_rng(4).integers(0, 256, (598, 598, 3)).astype(np.float32)
    x = torch.from_numpy(img.transpose(2, 0, 1))[None]
    ours = tf_resize_bilinear(x)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, img[::2, ::2])
    half_pixel = build_resizer("legacy_pytorch")(img)
    np.testing.assert_allclose(half_pixel, (img[::2, ::2] + img[1::2, ::2] + img[::2, 1::2] + img[1::2, 1::2]) / 4,
                               atol=1e-3)
    assert np.abs(half_pixel - ours).mean() > 10
    assert tf_resize_bilinear(torch.ones(1, 3, 299, 299) * 7).eq(7).all()


# ----------------------------------------------------------------------------- image sets

def test_image_set_reads_shards_and_image_folders_alike(tmp_path):
    from PIL import Image

    imgs = shapes(6)
    write_shard(tmp_path / "npz", imgs[:4])
    save_npz(tmp_path / "npz" / "shard-00001.npz", images=imgs[4:], labels=np.zeros(2, np.int64))
    record_set(tmp_path / "npz")
    (tmp_path / "png" / "sub").mkdir(parents=True)
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(tmp_path / "png" / "sub" / f"{i:03d}.png")
    a, b = ImageSet(tmp_path / "npz"), ImageSet(tmp_path / "png")
    assert len(a) == len(b) == 6 and a.shape == b.shape == (32, 32, 3)
    for i in range(6):
        np.testing.assert_array_equal(a.image(i), imgs[i])
        np.testing.assert_array_equal(b[i].numpy(), imgs[i].transpose(2, 0, 1))
    h = content_hash(a)
    write_shard(tmp_path / "npz", noisy(imgs[:4], 1.0))
    assert content_hash(ImageSet(tmp_path / "npz")) != h
    Image.fromarray(shapes(1)[0][:16]).save(tmp_path / "png" / "sub" / "999.png")
    with pytest.raises(MetricsError, match="size"):
        ImageSet(tmp_path / "png").image(6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricsError, match="no images"):
        ImageSet(tmp_path / "empty")


# ----------------------------------------------------------------------------- the offline network

def test_network_resolution_and_hash_check(tmp_path):
    packaged = packaged_path()
    assert sha256_file(packaged) == PACKAGED_SHA256
    bad = tmp_path / "inception-2015-12-05.pt"
    shutil.copy(packaged, bad)
    with open(bad, "r+b") as f:  # flip one byte inside the weights
        f.seek(bad.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ExtractorError, match="not pinned"):
        load_inception(env={ENV_PATH: str(bad)})
    # a corrupted clean-fid cache is skipped (with a warning) in favour of the pinned packaged file
    with pytest.warns(UserWarning, match="skipping"):
        net = load_inception(env={}, cleanfid_path=bad)
    assert net.path == packaged and net.sha256 == PACKAGED_SHA256 and net.classifier is None
    with pytest.raises(ExtractorError, match=ENV_PATH):
        load_inception(env={}, cleanfid_path=tmp_path / "missing.pt", packaged=tmp_path / "missing2.pt")


class FullInception(torch.nn.Module):
    """The layout of NVIDIA's full inception-2015-12-05.pt as clean-fid uses it: `layers` + `output`."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, x):
        return self.output(self.layers(x).reshape(-1, 2048))


def test_inception_score_needs_a_classifier_head(tmp_path, net):
    samples = write_shard(tmp_path / "s", shapes(8))
    with pytest.raises(ExtractorError, match="classifier"):
        compute.compute_metrics(samples, inception_score=True, net=net)
    # the workflow's offline mode: IS recorded as unavailable, with the reason, never as a number
    r = compute.compute_metrics(samples, inception_score="if-available", net=net, device="cpu", verbose=False)
    assert r["is_mean"] is None and "classifier" in r["is_unavailable"]
    # clean-fid's cache (first in the resolution order) holding the same weights plus an output layer
    torch.manual_seed(0)
    full = torch.jit.script(FullInception(net.layers))
    full.save(str(tmp_path / "inception-2015-12-05.pt"))
    full_net = load_inception("cpu", env={}, cleanfid_path=tmp_path / "inception-2015-12-05.pt")
    assert full_net.classifier is not None and full_net.sha256 != PACKAGED_SHA256
    r = compute.compute_metrics(samples, inception_score=True, is_splits=2, net=full_net, device="cpu",
                                verbose=False)
    assert 1.0 <= r["is_mean"] < 1008 and r["is_std"] >= 0 and "fid" not in r


# ----------------------------------------------------------------------------- real features

@pytest.fixture(scope="module")
def shape_features(net):
    """Inception features (legacy_tensorflow) of 20 shapes references and 20 other shapes at 3 noise levels."""
    sets = {"ref": shapes(20, "train"), **{s: noisy(shapes(20, "test"), s) for s in (0, 30, 90)}}
    out = {}
    for name, imgs in sets.items():
        x = torch.from_numpy(imgs.transpose(0, 3, 1, 2).astype(np.float32))
        out[name] = net.features(x, "legacy_tensorflow").numpy().astype(np.float64)
    return out


def test_fid_increases_with_noise_on_shapes(shape_features):
    f = shape_features
    ref = moments(f["ref"])
    fids = [frechet_distance(*moments(f[s]), *ref) for s in (0, 30, 90)]
    assert fids[0] < fids[1] < fids[2], fids
    assert fids[2] > 1.5 * fids[0]
    assert abs(frechet_distance(*ref, *ref)) < 1e-6 * np.trace(ref[1])  # singular 20-sample covariance


def test_clean_mode_reproduces_clean_fid_folder_pipeline(tmp_path, net):
    """Our npz reader + clean resize equal clean-fid's own `get_folder_features` on PNGs with the
    custom extractor m((x - 128) / 128)."""
    from cleanfid.fid import get_folder_features
    from PIL import Image

    imgs = shapes(6, "test")
    (tmp_path / "png").mkdir()
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(tmp_path / "png" / f"{i}.png")
    ours = np.concatenate(list(iter_features(open_images(write_shard(tmp_path / "npz", imgs), "clean"), net,
                                             "clean", "cpu", verbose=False)))
    theirs = get_folder_features(str(tmp_path / "png"), lambda x: net.layers((x - 128) / 128).reshape(len(x), -1),
                                 num_workers=0, batch_size=6, device=torch.device("cpu"), mode="clean",
                                 verbose=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_reference_stats_cached_reused_and_cli_json(tmp_path, net, monkeypatch, capsys):
    ref = write_shard(tmp_path / "ref", shapes(10, "train"))
    samples = write_shard(tmp_path / "samples", shapes(10, "test"))
    cache = tmp_path / "cache"
    first = compute.compute_metrics(samples, ref, n=10, cache_dir=cache, net=net, device="cpu", verbose=False,
                                    kid_subsets=5)
    assert first["ref_stats_cached"] is False and Path(first["ref_stats_path"]).is_file()
    assert first["label"] == "FID-10" and first["fid"] > 0 and np.isfinite(first["kid"])
    # every FID and KID carries a 95% interval of non-zero width (bootstrap over the samples; KID: its subset
    # spread, or the bootstrap where each subset would be all 10 samples)
    assert first["fid_ci95"][0] < first["fid"] < first["fid_ci95"][1]
    assert first["kid_ci95"][0] < first["kid"] < first["kid_ci95"][1] and first["kid_interval"] == "bootstrap"
    # each interval from its own bootstrap: the FID's from FID resamples, whichever way KID's is made
    feats = np.concatenate(list(iter_features(open_images(samples, "legacy_tensorflow"), net, "legacy_tensorflow",
                                              "cpu", None, None, verbose=False)))
    stats = np.load(first["ref_stats_path"])
    boot = scores.fid_bootstrap(feats, stats["mu"], stats["sigma"], 200, 0)
    assert first["fid_ci95"] == pytest.approx(list(scores.bootstrap_interval(first["fid"], boot)), rel=1e-6)
    assert first["fid_bootstrap"]["resamples"] == 200 and first["fid_bootstrap"]["seed"] == 0

    def no_features(*args, **kwargs):
        raise AssertionError("reference features recomputed despite the cache")

    monkeypatch.setattr(refstats, "iter_features", no_features)
    monkeypatch.setattr(compute, "load_inception", lambda device: net)
    out = tmp_path / "metrics.json"
    rc = cli.main(["fid", "--samples", str(samples), "--ref", str(ref), "--n", "10", "--format", "json",
                   "--cache-dir", str(cache), "--kid-subsets", "5", "--device", "cpu", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    for key in ("fid", "kid", "n", "mode", "extractor_sha256", "label", "provenance", "ref_stats_key"):
        assert key in printed
    assert printed["ref_stats_cached"] is True and printed["ref_stats_key"] == first["ref_stats_key"]
    assert printed["fid"] == pytest.approx(first["fid"], rel=1e-9) and printed["kid"] == pytest.approx(first["kid"])
    assert printed["fid_ci95"] == pytest.approx(first["fid_ci95"])  # seeded: the same interval again
    assert printed["mode"] == "legacy_tensorflow" and printed["extractor_sha256"] == PACKAGED_SHA256
    # another mode or other content -> another key
    assert refstats.stats_key("x", (32, 32), "clean", PACKAGED_SHA256) != refstats.stats_key(
        "x", (32, 32), "legacy_tensorflow", PACKAGED_SHA256)


def test_first_n_of_a_set_scores_exactly_like_a_set_of_those_n(tmp_path, net):
    """Table 3's FID-5k reads the first 5k images of the 50k set: the same numbers as a directory of only them."""
    ref = write_shard(tmp_path / "ref", shapes(10, "train"))
    imgs = shapes(9, "test")
    big = tmp_path / "big"
    write_shard(big, imgs[:4])
    (big / "shard-00000.npz").rename(big / "keep.npz")  # two shards: the prefix crosses a shard boundary
    write_shard(big, imgs[4:])
    (big / "shard-00000.npz").rename(big / "shard-00001.npz")
    (big / "keep.npz").rename(big / "shard-00000.npz")
    record_set(big)
    kw = dict(cache_dir=tmp_path / "cache", net=net, device="cpu", verbose=False, kid_subsets=5)
    part = compute.compute_metrics(big, ref, first=6, **kw)
    alone = compute.compute_metrics(write_shard(tmp_path / "six", imgs[:6]), ref, n=6, **kw)
    assert part["label"] == "FID-6" and part["n"] == 6 and part["samples_held"] == 9
    for key in ("fid", "kid", "fid_ci95", "kid_ci95"):
        assert part[key] == pytest.approx(alone[key], rel=1e-6)
    with pytest.raises(MetricsError, match=r"first=10 but .* holds 9 samples; expected 1 <= first <= 9"):
        compute.compute_metrics(big, ref, first=10, **kw)


# ----------------------------------------------------------------------------- error paths

def test_count_and_input_errors(tmp_path, capsys):
    samples = write_shard(tmp_path / "s", shapes(3))
    with pytest.raises(MetricsError, match="n=5 but .* holds 3 samples"):
        compute.compute_metrics(samples, tmp_path, n=5)
    with pytest.raises(MetricsError, match="at least 2"):
        compute.compute_metrics(write_shard(tmp_path / "one", shapes(1)), tmp_path)
    with pytest.raises(MetricsError, match="nothing to compute"):
        compute.compute_metrics(samples)
    with pytest.raises(MetricsError, match="not a directory"):
        compute.compute_metrics(tmp_path / "missing", tmp_path)
    assert cli.main(["fid", "--samples", str(samples), "--ref", str(samples), "--n", "4", "--format", "json"]) == 2
    err = capsys.readouterr().err
    assert "n=4" in err and "3 samples" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["fid", "--samples", str(samples), "--n", "0"])
    assert e.value.code == 2
