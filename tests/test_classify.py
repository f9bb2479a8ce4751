"""Class accuracy on the embedded shapes data (hdit.metrics.classify): the classifier's test accuracy, real
images scored as their own class, shuffled labels at chance, the content-keyed cache, determinism, the CLI."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from hdit.cli import main as cli
from hdit.data.shapes import render
from hdit.integrity import write_set_record
from hdit.io import save_npz
from hdit.metrics import classify
from hdit.metrics.classify import (ClassifierConfig, ClassifyError, class_accuracy, classifier_key, load_classifier,
                                   score_samples, train_classifier, wilson_interval)

pytestmark = pytest.mark.usefixtures("one_thread")

REAL = np.arange(200_000, 201_000)  # training-split images the classifier never saw (it reads the first 16,384)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("classifier-cache")


@pytest.fixture(scope="module")
def trained(cache):
    """The default classifier, trained once for the module (about 20 s of one core)."""
    model, info = load_classifier(ClassifierConfig(), cache)
    return model, info


def write_shards(root, images, labels, per_shard=400, **meta):
    for k in range(0, len(images), per_shard):
        save_npz(root / f"shard-{k // per_shard:05d}.npz", images=images[k:k + per_shard],
                 labels=labels[k:k + per_shard].astype(np.int64))
    write_set_record(root, meta, -(-len(images) // per_shard))  # meta.json with the shard list, written last
    return root


def test_classifier_reaches_its_accuracy_on_the_test_split(trained):
    _, info = trained
    assert not info["cached"] and info["test_n"] == 10_000
    assert info["test_accuracy"] >= 0.99  # measured 0.9999 (one mistake in 10,000)
    assert min(info["test_per_class"].values()) >= 0.97
    assert info["key"] == classifier_key(ClassifierConfig()) and info["config"]["train_n"] == 16_384


def test_real_images_score_as_their_own_class_and_shuffled_labels_at_chance(trained, cache, tmp_path):
    model, info = trained
    images, labels = render(REAL, 32, seed=0, split="train")
    real = score_samples(write_shards(tmp_path / "real", images, labels), cache_dir=cache)
    assert real["n"] == 1000 and real["classifier"]["cached"] and real["chance"] == 0.1
    assert real["accuracy"] == pytest.approx(info["test_accuracy"], abs=0.01)
    lo, hi = real["accuracy_ci95"]
    assert lo <= real["accuracy"] <= hi and hi - lo < 0.02
    assert sum(c["n"] for c in real["per_class"].values()) == 1000
    assert all(c["accuracy"] >= 0.95 for c in real["per_class"].values())
    shuffled = np.random.default_rng(0).permutation(labels)
    r = class_accuracy(images, shuffled, model)
    assert r["accuracy"] == pytest.approx(0.1, abs=0.04)  # sum_c p_c^2 = 0.1; binomial sd ~ 0.01
    assert r["predicted_counts"] == real["predicted_counts"]  # the same images, only the labels differ


def test_cache_hit_reuses_without_retraining(trained, cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(classify, "train_classifier", no_training)
    model, info = load_classifier(ClassifierConfig(), cache)
    assert info["cached"] and info["test_accuracy"] == trained[1]["test_accuracy"]
    for a, b in zip(model.state_dict().values(), trained[0].state_dict().values()):
        assert torch.equal(a, b)
    # any other hyperparameter, resolution or code version is another key (-> trains: the patched function raises)
    assert classifier_key(replace(ClassifierConfig(), lr=1e-3)) != classifier_key(ClassifierConfig())
    assert classifier_key(ClassifierConfig(resolution=64)) != classifier_key(ClassifierConfig())
    monkeypatch.setattr(classify, "CODE_VERSION", classify.CODE_VERSION + 1)
    assert classifier_key(ClassifierConfig()) != trained[1]["key"]
    with pytest.raises(AssertionError, match="retrained"):
        load_classifier(ClassifierConfig(), cache)


def test_training_is_deterministic():
    cfg = ClassifierConfig(train_n=256, test_n=64, batch_size=32)
    a, b = train_classifier(cfg), train_classifier(cfg)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train_classifier(replace(cfg, seed=1)).state_dict()  # the seed matters (the test can fail)
    assert not all(torch.equal(sa[k], c[k]) for k in sa)
    assert classifier_key(ClassifierConfig()) == "shapes-32px-147d21616db0f759ebcecb11"  # golden: data + config + code


def test_wilson_interval():
    assert wilson_interval(90, 100) == pytest.approx((0.825634, 0.944771), abs=1e-6)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_cli_writes_the_record(trained, cache, tmp_path, capsys):
    images, labels = render(REAL[:100], 32, seed=0, split="train")
    samples = write_shards(tmp_path / "s", images, labels, per_shard=64, config_id="E", n=100, steps=25,
                           cfg_scale=1.0)
    out = tmp_path / "m" / "classacc.json"
    assert cli(["classify", "--samples", str(samples), "--out", str(out), "--cache-dir", str(cache)]) == 0
    r = json.loads(out.read_text())
    assert {"accuracy", "accuracy_ci95", "n", "chance", "per_class", "classifier", "provenance"} <= r.keys()
    assert r["n"] == 100 and r["accuracy"] >= 0.97 and r["sample_meta"]["config_id"] == "E"
    assert r["classifier"]["test_accuracy"] == trained[1]["test_accuracy"] and r["per_class"]["0"]["name"]
    assert "class accuracy" in capsys.readouterr().out
    assert cli(["classify", "--fit", "--out", str(tmp_path / "fit.json"), "--cache-dir", str(cache)]) == 0
    assert json.loads((tmp_path / "fit.json").read_text())["key"] == trained[1]["key"]


@pytest.mark.parametrize("case,message", [
    ("missing", "not a directory"),
    ("empty", "no shard-"),
    ("unconditional", "conditioning label -1"),
    ("resolution", "images are 16x16"),
    ("incomplete", "meta.json says n=50"),
])
def test_cli_bad_input(trained, cache, tmp_path, capsys, case, message):
    d = tmp_path / "s"
    d.mkdir()
    images, labels = render(np.arange(20), 16 if case == "resolution" else 32)
    if case == "unconditional":
        labels = np.full(20, -1)
    if case not in ("missing", "empty"):
        write_shards(d, images, labels, **({"n": 50} if case == "incomplete" else {}))
    target = tmp_path / "nope" if case == "missing" else d
    out = tmp_path / "out.json"
    args = ["classify", "--samples", str(target), "--out", str(out), "--cache-dir", str(cache), "--resolution", "32"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()
    with pytest.raises(ClassifyError):
        score_samples(target, ClassifierConfig(resolution=32), cache_dir=cache)


# ----------------------------------------------------------------------------- workflow

def _dry_run(tmp_path, target, *extra):
    from test_workflow import job_counts, jobs, snakemake

    r = snakemake(tmp_path, "-n", "-p", target, *extra)
    assert r.returncode == 0, r.stderr + r.stdout
    return job_counts(r.stdout), lambda rule: jobs(r.stdout, rule)


def test_workflow_scores_class_accuracy_of_conditional_shapes_runs(tmp_path):
    from hdit.profiles import get_profile, resolve

    counts, jobs_of = _dry_run(tmp_path, "table1")
    assert counts["classifier"] == 1 and counts["class_accuracy"] == 10
    n, steps = get_profile("default").fid_samples, resolve("E", "default").sample.steps
    e = [j for j in jobs_of("class_accuracy") if "/E/" in j]
    assert len(e) == 1 and f"output: results/metrics/default/E/seed0-cfg1.0-n{n}.classacc.json" in e[0]
    assert f"hdit classify --samples results/samples/default/E/seed0-cfg1.0-n{n}-steps{steps}" in e[0]
    assert "--cache-dir results/cache/classifier" in jobs_of("classifier")[0]
    counts, _ = _dry_run(tmp_path, "table3")  # FFHQ: unconditional, nothing to classify
    assert "class_accuracy" not in counts and "classifier" not in counts


def test_workflow_paper_profile_has_no_class_accuracy(tmp_path):
    from test_workflow import ROOT

    (tmp_path / "imagenet" / "n01440764").mkdir(parents=True)
    (tmp_path / "ffhq").mkdir()
    (tmp_path / "ffhq" / "00000.png").touch()
    text = (ROOT / "workflows/config/paper.yaml").read_text()
    text = text.replace("/data/imagenet/train", str(tmp_path / "imagenet"))
    text = text.replace("/data/ffhq/images1024x1024", str(tmp_path / "ffhq"))
    (tmp_path / "paper.yaml").write_text(text)
    counts, _ = _dry_run(tmp_path / "work", "all", "--configfile", str(tmp_path / "paper.yaml"))
    # ffhq-1024 trains on 8 nodes: its job is the multi-node form of the train rule (issue 23)
    assert counts["train"] + counts["train_multinode"] == 16 and "class_accuracy" not in counts and "classifier" not in counts
