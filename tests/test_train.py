"""Trainer: EMA, class dropout, checkpoint/resume bitwise equality (simulated and SIGKILL), loss falls,
non-finite loss, run-dir protection, CLI errors. All on CPU with the real models; multi-process training
(world-size invariance, elastic resume, agreed stop): tests/test_distributed.py."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hdit.cli import main as cli
from hdit.ema import ema_decay, ema_update
from hdit.profiles import resolve
from hdit.step import drop_labels
from hdit.train import DivergedError, RunExistsError, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")


def small(config_id: str, batch_size: int = 8, **train_kw):
    run = resolve(config_id, "default")
    return replace(run, train=replace(run.train, batch_size=batch_size, **train_kw))


def load(path):
    return torch.load(Path(path) / "checkpoint.pt", map_location="cpu", weights_only=False)


def assert_same_weights(a, b):
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(sa[k][name], sb[k][name])


def losses(run_dir):
    with open(Path(run_dir) / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------- EMA, dropout

def test_ema_decay_schedule_and_update():
    assert ema_decay(0) == 0.0  # first update copies the weights
    assert ema_decay(7, 0.9999, 2 / 3, 1.0) == pytest.approx(1 - 8 ** (-2 / 3))
    assert ema_decay(10 ** 9, 0.9999) == 0.9999
    assert ema_decay(100, 0.9, 1.0, 1.0) == 0.9
    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(3.0)
        b.running_mean.fill_(5.0)
    ema_update(a, b, 0.75)
    assert torch.allclose(a.weight, torch.full((3,), 0.75 * 1 + 0.25 * 3))
    assert torch.equal(a.running_mean, b.running_mean)  # buffers copied


def test_class_dropout():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (20000,), generator=g)
    u = torch.rand(labels.shape, generator=g)
    out = drop_labels(labels, 10, 0.1, u)
    dropped = out == 10
    assert dropped.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(out[~dropped], labels[~dropped]) and torch.equal(dropped, u < 0.1)
    assert drop_labels(labels, 0, 0.1, u) is None


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("config_id", ["E", "R1"])
def test_resume_is_bitwise_equal(tmp_path, config_id):
    """4 steps in one go == 2 steps, then --resume to 4 (EDM and R1's DDPM objective)."""
    run = small(config_id, batch_size=4)
    kw = dict(checkpoint_every=2, log_every=1, progress=False)
    train(run, tmp_path / "a", steps=4, **kw)
    train(run, tmp_path / "b", steps=2, **kw)
    assert load(tmp_path / "b")["step"] == 2
    train(run, tmp_path / "b", steps=4, resume=True, **kw)
    a, b = load(tmp_path / "a"), load(tmp_path / "b")
    assert a["step"] == b["step"] == 4 and a["data"] == b["data"]
    assert_same_weights(a, b)
    assert [x[1] for x in losses(tmp_path / "a")] == [x[1] for x in losses(tmp_path / "b")]
    # a different seed gives different weights (the test can fail)
    train(run, tmp_path / "c", steps=2, seed=1, checkpoint_every=2, progress=False)
    c = load(tmp_path / "c")
    assert not all(torch.equal(c["model"][k], a["model"][k]) for k in a["model"])


def test_sigkill_and_resume_matches_uninterrupted(tmp_path, capsys):
    """`hdit train` killed with SIGKILL after its first checkpoint, resumed, == an uninterrupted run."""
    steps, every = 6, 2
    cmd = [sys.executable, "-m", "hdit.cli", "train", "--config", "E", "--profile", "default", "--steps", str(steps),
           "--checkpoint-every", str(every), "--log-every", "1", "--no-progress", "--device", "cpu"]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(run_dir)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load(run_dir)["step"]
    assert proc.returncode == -signal.SIGKILL and killed_at < steps and not (run_dir / "done.json").exists()
    # without --resume the half-finished run is protected
    assert cli(cmd[3:] + ["--out", str(run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err
    r = subprocess.run(cmd + ["--out", str(run_dir), "--resume"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    train(resolve("E", "default"), tmp_path / "ref", steps=steps, checkpoint_every=every, log_every=1, progress=False,
          device="cpu")
    a, b = load(tmp_path / "ref"), load(run_dir)
    assert b["step"] == steps
    assert_same_weights(a, b)
    assert losses(run_dir) == losses(tmp_path / "ref")  # rows of the lost segment were replaced, not duplicated
    done = json.loads((run_dir / "done.json").read_text())
    assert done["step"] == steps and done["wall_time_s"] > 0 and "provenance" in done
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["config_id"] == "E" and cfg["profile"] == "default" and cfg["config"]["train"]["steps"] == steps
    assert not list(run_dir.glob(".*.tmp*"))  # no temporary files left behind by the killed writer


# ----------------------------------------------------------------------------- lr schedule

def test_lr_schedule_factors():
    from hdit.configs import ConfigError, TrainConfig

    assert [TrainConfig().lr_factor(s) for s in (0, 10, 10 ** 6)] == [1.0, 1.0, 1.0]  # Table 6: constant
    t = TrainConfig(steps=110, lr_schedule="cosine", lr_warmup_steps=10)
    f = [t.lr_factor(s) for s in range(110)]
    assert f[:3] == pytest.approx([0.1, 0.2, 0.3]) and f[9] == 1.0 and f[10] == 1.0  # linear warm-up, then the peak
    assert f[60] == pytest.approx(0.5) and f[109] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone half-cosine decay
    assert TrainConfig(lr_warmup_steps=4).lr_factor(1) == 0.5  # warm-up alone, constant afterwards
    with pytest.raises(ConfigError, match="lr_schedule='step'"):
        TrainConfig(lr_schedule="step")


def test_lr_schedule_drives_every_param_group(tmp_path):
    """The logged lr follows the schedule; the mapping network keeps its lr/3 ratio (param groups)."""
    run = small("E", batch_size=2, lr=1e-3, lr_schedule="cosine", lr_warmup_steps=2, steps=6)
    train(run, tmp_path / "c", checkpoint_every=6, log_every=1, progress=False)
    with open(tmp_path / "c" / "log.csv") as f:
        logged = [float(r["lr"]) for r in csv.DictReader(f)]
    assert logged == pytest.approx([1e-3 * run.train.lr_factor(s) for s in range(6)], rel=1e-5)
    groups = load(tmp_path / "c")["opt"]["param_groups"]
    last = run.train.lr_factor(5)
    assert sorted({round(g["lr"] / last, 9) for g in groups}) == pytest.approx([1e-3 / 3, 1e-3])
    # a decaying schedule is a function of the step count: a longer run is another run, not an extension
    with pytest.raises(Exception, match="decays over the step count"):
        train(replace(run, train=replace(run.train, steps=8)), tmp_path / "c", resume=True, progress=False)


# ----------------------------------------------------------------------------- training signal

def test_loss_falls_on_shapes(tmp_path):
    """Mini E (default profile, batch 32) learns the shapes dataset: the loss drops within 30 steps."""
    done = train(resolve("E", "default"), tmp_path / "e", steps=30, checkpoint_every=30, log_every=5,
                 progress=False, device="cpu")
    rows = losses(tmp_path / "e")
    assert [s for s, _ in rows] == [5, 10, 15, 20, 25, 30] and done["step"] == 30
    first, last = rows[0][1], rows[-1][1]
    assert last < 0.8 * first, rows


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    run = small("E", batch_size=4, lr=1e30)  # the first update blows the weights up
    with pytest.raises(DivergedError, match=r"loss is (nan|inf) at step \d+.*last good checkpoint \(step \d+\)"):
        train(run, tmp_path / "nan", steps=20, checkpoint_every=1, progress=False)
    ckpt = load(tmp_path / "nan")
    assert ckpt["step"] >= 1 and not (tmp_path / "nan" / "done.json").exists()


# ----------------------------------------------------------------------------- run dir and CLI errors

def test_finished_run_needs_resume(tmp_path, capsys):
    run = small("E", batch_size=2)
    train(run, tmp_path / "r", steps=1, progress=False)
    with pytest.raises(RunExistsError, match="finished run.*--resume"):
        train(run, tmp_path / "r", steps=1, progress=False)
    done = train(run, tmp_path / "r", steps=1, resume=True, progress=False)  # nothing to do
    assert done["step"] == 1
    other = small("D", batch_size=2)
    with pytest.raises(Exception, match="was started with config 'E'"):
        train(other, tmp_path / "r", steps=2, resume=True, progress=False)


def test_cli_errors(tmp_path, capsys):
    assert cli(["train", "--config", "Z9", "--out", str(tmp_path / "z")]) == 2
    assert "unknown config 'Z9'" in capsys.readouterr().err
    assert cli(["train", "--config", "E", "--profile", "paper", "--data", str(tmp_path / "missing"),
                "--out", str(tmp_path / "p")]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli(["train", "--config", "E", "--profile", "paper", "--out", str(tmp_path / "p")]) == 2
    assert "--data" in capsys.readouterr().err
    assert cli(["train", "--config", "E", "--steps", "0", "--out", str(tmp_path / "q")]) == 2
    assert cli(["train", "--config", "E", "--profile", "bogus", "--out", str(tmp_path / "q")]) == 2
    assert "unknown profile" in capsys.readouterr().err

