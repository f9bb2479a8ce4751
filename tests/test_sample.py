"""`hdit sample`: shards, determinism, resume == uninterrupted, CFG, R1's DDPM path, errors (real models)."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from hdit.cli import main as cli
from hdit.io import torch_save
from hdit.profiles import get_profile, resolve
from hdit.sample import SampleError, load_run, sample_run
from hdit.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_run(tmp_path_factory, config_id):
    run = resolve(config_id, "default")
    run = replace(run, train=replace(run.train, batch_size=4))
    out = tmp_path_factory.mktemp(f"run-{config_id}")
    train(run, out, steps=2, checkpoint_every=2, progress=False, device="cpu")
    return out


@pytest.fixture(scope="module")
def run_e(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _tiny_run(tmp_path_factory, "E")
    torch.set_num_threads(n)


def _read(out):
    shards = sorted(out.glob("shard-*.npz"))
    images = np.concatenate([np.load(s)["images"] for s in shards])
    labels = np.concatenate([np.load(s)["labels"] for s in shards])
    return images, labels


def test_shards_format_and_meta(run_e, tmp_path):
    out = tmp_path / "s"
    meta = sample_run(run_e, out, n=5, steps=3, seed=7, batch_size=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "shard-00000.npz", "shard-00001.npz",
                                                     "shard-00002.npz"]
    images, labels = _read(out)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and ((0 <= labels) & (labels < 10)).all()
    stored = json.loads((out / "meta.json").read_text())
    for k in ("run", "config_id", "profile", "n", "seed", "sampler", "steps", "cfg_scale", "provenance"):
        assert k in stored
    assert stored["sampler"] == "dpmpp-3m-sde" and stored["steps"] == 3 and stored["cfg_scale"] == 1.0
    assert stored["profile"] == "default" and stored["weights"] == "ema" and meta["n"] == 5
    # the run's SampleConfig supplies the default step count
    assert load_run(run_e)[0].sample.steps == get_profile("default").sample_steps  # the profile decides


def test_sampling_reads_the_ema_weights_alone_and_older_runs_still_sample(run_e, tmp_path):
    """ema.pt holds exactly the checkpoint's EMA weights at its step; sampling never opens checkpoint.pt (a quarter
    of the bytes to verify and load), and a run written before ema.pt existed samples from its checkpoint."""
    ema, ckpt = (torch.load(run_e / f, weights_only=False) for f in ("ema.pt", "checkpoint.pt"))
    assert sorted(ema) == ["config", "ema", "profile", "step"] and ema["step"] == ckpt["step"] == 2
    assert ema["config"] == ckpt["config"] and ema["ema"].keys() == ckpt["ema"].keys()
    assert all(torch.equal(ema["ema"][k], ckpt["ema"][k]) for k in ckpt["ema"])
    params = sum(p.numel() for p in load_run(run_e)[2].parameters())
    assert json.loads((run_e / "done.json").read_text())["params"] == params  # for `hdit report metrics`
    reference = tmp_path / "ref"
    sample_run(run_e, reference, n=3, steps=2, seed=0, batch_size=3, progress=False)
    for name, damage in (("resume state unreadable", "checkpoint.pt"), ("older run", "ema.pt")):
        run = tmp_path / name
        shutil.copytree(run_e, run)
        if damage == "checkpoint.pt":
            (run / damage).write_bytes(b"never read")
        else:
            (run / damage).unlink()
        sample_run(run, tmp_path / f"{name}-s", n=3, steps=2, seed=0, batch_size=3, progress=False)
        assert np.array_equal(_read(tmp_path / f"{name}-s")[0], _read(reference)[0]), name


def test_resume_equals_uninterrupted_and_seed_matters(run_e, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sample_run(run_e, a, n=6, steps=3, seed=1, batch_size=2, progress=False)
    sample_run(run_e, b, n=6, steps=3, seed=1, batch_size=2, progress=False)
    for k in (1, 2):  # simulate a job killed after its first shard: no meta.json yet
        (b / f"shard-{k:05d}.npz").unlink()
    (b / "meta.json").rename(b / ".sampling.json")
    before = (b / "shard-00000.npz").stat().st_mtime_ns
    sample_run(run_e, b, n=6, steps=3, seed=1, batch_size=2, progress=False)
    assert (b / "shard-00000.npz").stat().st_mtime_ns == before  # existing shards are skipped
    assert (b / "meta.json").exists() and not (b / ".sampling.json").exists()
    ia, la = _read(a)
    ib, lb = _read(b)
    assert np.array_equal(ia, ib) and np.array_equal(la, lb)
    sample_run(run_e, c, n=6, steps=3, seed=2, batch_size=2, progress=False)
    assert not np.array_equal(_read(c)[0], ia)
    with pytest.raises(SampleError, match="different settings.*batch_size=2"):
        sample_run(run_e, b, n=6, steps=3, seed=1, batch_size=3, progress=False)


def test_cfg_changes_samples_and_labels_cover_classes(run_e, tmp_path):
    # after 2 steps the zero-initialised conditioning paths barely react to the class: perturb the EMA
    # weights so that conditional and unconditional predictions differ
    run = tmp_path / "run"
    shutil.copytree(run_e, run)
    ckpt = torch.load(run / "ema.pt", weights_only=False)
    g = torch.Generator().manual_seed(0)
    ckpt["ema"] = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                   for k, v in ckpt["ema"].items()}
    torch_save(ckpt, run / "ema.pt")  # the harness's writer: the checksum describes the edited weights
    sample_run(run, tmp_path / "w1", n=4, steps=3, seed=0, batch_size=4, progress=False)
    sample_run(run, tmp_path / "w3", n=4, steps=3, seed=0, batch_size=4, cfg_scale=3.0, progress=False)
    i1, l1 = _read(tmp_path / "w1")
    i3, l3 = _read(tmp_path / "w3")
    assert np.array_equal(l1, l3) and not np.array_equal(i1, i3)
    sample_run(run_e, tmp_path / "many", n=200, steps=1, seed=0, batch_size=200, progress=False)
    _, labels = _read(tmp_path / "many")
    assert set(labels.tolist()) == set(range(10))


def test_r1_ddpm_sampling(tmp_path_factory, tmp_path):
    run = _tiny_run(tmp_path_factory, "R1")
    assert cli(["sample", "--run", str(run), "--n", "3", "--steps", "4", "--batch-size", "2", "--cfg-scale", "1.5",
                "--out", str(tmp_path / "d"), "--no-progress", "--device", "cpu"]) == 0
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["sampler"] == "ddpm" and meta["steps"] == 4 and meta["cfg_scale"] == 1.5
    images, labels = _read(tmp_path / "d")
    assert images.shape == (3, 32, 32, 3)


def test_cli_errors(run_e, tmp_path, capsys):
    assert cli(["sample", "--run", str(tmp_path / "nope"), "--n", "2", "--out", str(tmp_path / "o")]) == 2
    assert "not a trained run" in capsys.readouterr().err
    assert cli(["sample", "--run", str(run_e), "--n", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--n 0" in capsys.readouterr().err
    assert cli(["sample", "--run", str(run_e), "--n", "2", "--steps", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--steps 0" in capsys.readouterr().err
