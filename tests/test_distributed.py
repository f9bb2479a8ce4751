"""The same run on any number of processes and nodes (issue 22), gloo on CPU, fp32, default-profile E (EDM) and
R1 (DDPM) at batch 4, --threads 1.

1 process with batch 4 == 2 processes of 2 (torchrun --standalone) == 2 "nodes" of 1 process (two torchrun
agents, c10d rendezvous on localhost) == 1 process accumulating 2 micro-batches of 2, in weights, EMA and
logged loss. The last three split the batch the same way (two micro-batches of 2), and DDP's average of two
gradients, (a + b) / 2, equals accumulation's a / 2 + b / 2 exactly (halving is exact in floating point): they
are compared bitwise. One process with batch 4 runs its matrix products on 4 rows instead of 2, which rounds
differently: measured on a 2-core AMD EPYC VM, torch 2.14, the weights differ by at most 1.5e-8 after 3 steps
(while training moves them by ~1e-4); the test allows TOL = 1e-6 (weights, EMA) and a relative 1e-5 on the
logged loss (6 significant digits). Then: 2 processes resumed on 1 (elastic), an agreed stop after SIGTERM to
one of two ranks (exit 75, one checkpoint, the resumed run bitwise equal to the uninterrupted one) and
--time-budget.

Launches are few (every torchrun start-up costs seconds): one `tests/distributed_driver.py` launch trains
both rows in turn.
"""
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from hdit import io
from hdit.cli import main as cli
from hdit.errors import EXIT_STOPPED
from distributed_driver import main as drive, small  # tests/ is on sys.path (pytest rootdir-less import)

ROOT = Path(__file__).resolve().parent.parent
DRIVER = [str(ROOT / "tests" / "distributed_driver.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ROWS = ("E", "R1")
STEPS = 3
TOL = 1e-6

pytestmark = pytest.mark.usefixtures("one_thread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(agents: list[list[str]], timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Start every torchrun agent at once (two 'nodes' must rendezvous), wait for all of them."""
    procs = [subprocess.Popen(a, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for a in agents]
    out = [p.communicate(timeout=timeout)[0] for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o) for p, o in zip(procs, out)]


def load(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)


def logged(run_dir) -> list[tuple[int, float]]:
    with open(Path(run_dir) / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def max_diff(a, b) -> float:
    """Largest absolute difference over the model and EMA tensors of two checkpoints (same step)."""
    assert a["step"] == b["step"]
    return max((a[k][n].double() - b[k][n].double()).abs().max().item() for k in ("model", "ema") for n in a[k])


def assert_bitwise(dir_a, dir_b):
    a, b = load(dir_a), load(dir_b)
    assert a["step"] == b["step"] and max_diff(a, b) == 0.0
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert logged(dir_a) == logged(dir_b)


def assert_close(dir_a, dir_b):
    assert max_diff(load(dir_a), load(dir_b)) <= TOL
    la, lb = logged(dir_a), logged(dir_b)
    assert [s for s, _ in la] == [s for s, _ in lb]
    assert [v for _, v in la] == pytest.approx([v for _, v in lb], rel=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every partition of the batch-4 run trained for STEPS steps: {name: results dir with one dir per row}."""
    root = tmp_path_factory.mktemp("partitions")
    args = ["--configs", ",".join(ROWS), "--batch", "4", "--steps", str(STEPS)]
    ddp = TORCHRUN + ["--standalone", "--nproc_per_node", "2"] + DRIVER + ["--out", str(root / "ddp")] + args
    port = free_port()
    node = TORCHRUN + ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                       f"localhost:{port}", "--rdzv_id", f"hdit-test-{port}"] + DRIVER + ["--out", str(root / "nodes")]
    for r in launch([ddp]) + launch([node + args, node + args]):
        assert r.returncode == 0, r.stdout[-4000:]
    assert drive(["--out", str(root / "one")] + args) == 0
    assert drive(["--out", str(root / "accum")] + args + ["--grad-accum", "2"]) == 0
    return {name: root / name for name in ("ddp", "nodes", "one", "accum")}


@pytest.mark.parametrize("row", ROWS)
def test_one_process_equals_two_processes_two_nodes_and_accumulation(runs, row):
    for name in ("ddp", "nodes"):
        ckpt = load(runs[name] / row)
        assert ckpt["world_size"] == 2 and "rng" not in ckpt  # no per-rank state in the checkpoint
    assert load(runs["accum"] / row)["grad_accum"] == 2
    assert_bitwise(runs["ddp"] / row, runs["nodes"] / row)
    assert_bitwise(runs["ddp"] / row, runs["accum"] / row)
    assert_close(runs["one"] / row, runs["ddp"] / row)
    # the tolerance is far below what the run learns: training moved the weights by more than 100 x TOL
    from hdit.backbones import build_model

    torch.manual_seed(0)
    init = build_model(small(row, 4).model).state_dict()
    trained = load(runs["one"] / row)["model"]
    assert max((trained[n] - init[n]).abs().max().item() for n in init) > 100 * TOL


def test_two_processes_resumed_on_one(runs, tmp_path):
    """Elastic resume: 2 processes for 3 steps, then 1 process to 6 == 1 process straight to 6 (within TOL);
    continued with 2 micro-batches (the 2-process partition) it is bitwise equal to that partition's run."""
    for name, accum in (("plain", 1), ("accum", 2)):
        shutil.copytree(runs["ddp"] / "E", tmp_path / name / "E")
        common = ["--configs", "E", "--steps", str(2 * STEPS), "--grad-accum", str(accum)]
        assert drive(["--out", str(tmp_path / name), "--resume"] + common) == 0
        assert drive(["--out", str(tmp_path / f"straight-{name}")] + common) == 0
    assert_close(tmp_path / "plain" / "E", tmp_path / "straight-plain" / "E")
    assert_bitwise(tmp_path / "accum" / "E", tmp_path / "straight-accum" / "E")
    assert load(tmp_path / "plain" / "E")["world_size"] == 1


def test_sigterm_to_one_rank_stops_both_at_one_step(tmp_path):
    out = tmp_path / "stopped"
    cmd = TORCHRUN + ["--standalone", "--nproc_per_node", "2"] + DRIVER + ["--out", str(out), "--steps", "1000"]
    agent = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, deadline = out / "E" / "log.csv", time.time() + 120
    while (not log.exists() or len(log.read_text().splitlines()) < 3) and time.time() < deadline:
        time.sleep(0.05)  # two steps logged: both ranks are inside the training loop
    rank1 = [c for c in psutil.Process(agent.pid).children(recursive=True) if c.environ().get("RANK") == "1"]
    assert len(rank1) == 1, "rank 1 not found"
    rank1[0].send_signal(signal.SIGTERM)
    text = agent.communicate(timeout=120)[0]
    stopped = load(out / "E")["step"]
    assert 2 <= stopped < 1000 and not (out / "E" / "done.json").exists()
    assert f"stopped at step {stopped} (SIGTERM received); continue with --resume" in text
    assert "rank 0: E exit 75" in text and "rank 1: E exit 75" in text, text[-4000:]
    assert logged(out / "E")[-1][0] == stopped  # one checkpoint, at the agreed step, the log cut there
    assert agent.returncode != 0  # torchrun itself reports its workers' 75 as a failure (exit 1)
    # continued on 1 process with the 2-process partition (2 micro-batches): bitwise the uninterrupted run
    common = ["--configs", "E", "--steps", str(stopped + 2), "--grad-accum", "2"]
    assert drive(["--out", str(out), "--resume"] + common) == 0
    assert drive(["--out", str(tmp_path / "straight")] + common) == 0
    assert_bitwise(out / "E", tmp_path / "straight" / "E")
    assert (out / "E" / "done.json").exists()


def test_time_budget_stops_with_exit_75_and_resumes(runs, tmp_path, capsys):
    common = ["--out", str(tmp_path), "--configs", "E", "--steps", str(STEPS)]
    assert drive(common + ["--time-budget", "0.001"]) == EXIT_STOPPED
    assert "stopped at step 1 (--time-budget 0.001 s spent); continue with --resume" in capsys.readouterr().err
    assert load(tmp_path / "E")["step"] == 1 and not (tmp_path / "E" / "done.json").exists()
    assert drive(common + ["--resume"]) == 0
    assert_bitwise(tmp_path / "E", runs["one"] / "E")


def test_sigusr1_stops_a_single_process(runs, tmp_path, monkeypatch, capsys):
    """SIGUSR1 (SLURM's --signal) received during step 2: the process stops after it; the resumed run is the
    uninterrupted one."""
    from hdit.step import TrainStep

    original = TrainStep.__call__

    def signalled(self, x, labels, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, x, labels, step)

    monkeypatch.setattr(TrainStep, "__call__", signalled)
    common = ["--out", str(tmp_path), "--configs", "E", "--steps", str(STEPS)]
    assert drive(common) == EXIT_STOPPED
    assert "stopped at step 2 (SIGUSR1 received)" in capsys.readouterr().err
    monkeypatch.setattr(TrainStep, "__call__", original)
    assert drive(common + ["--resume"]) == 0
    assert_bitwise(tmp_path / "E", runs["one"] / "E")


def test_bad_grad_accum_and_time_budget(tmp_path, capsys):
    base = ["train", "--config", "E", "--profile", "default", "--steps", "1", "--device", "cpu", "--no-progress"]
    assert cli(base + ["--out", str(tmp_path / "a"), "--grad-accum", "3"]) == 2
    assert "--grad-accum 3: the per-rank batch 32" in capsys.readouterr().err
    assert cli(base + ["--out", str(tmp_path / "a"), "--grad-accum", "0"]) == 2
    assert cli(base + ["--out", str(tmp_path / "a"), "--time-budget", "0"]) == 2
    assert "--time-budget 0.0; expected a positive number" in capsys.readouterr().err
    assert not (tmp_path / "a" / "config.json").exists()  # refused before the run dir holds a run


def test_checkpoint_of_per_rank_draws_is_refused(runs, tmp_path):
    """A checkpoint of the trainer before keyed draws (per-rank RNG states) cannot continue the same run."""
    shutil.copytree(runs["one"] / "E", tmp_path / "E")
    ckpt = load(tmp_path / "E")
    del ckpt["draws"]
    ckpt["rng"] = [{"gen": torch.ByteTensor(8)}]
    io.torch_save(ckpt, tmp_path / "E" / "checkpoint.pt")
    (tmp_path / "E" / "done.json").unlink()
    from hdit.errors import HarnessError
    from hdit.train import train

    with pytest.raises(HarnessError, match="draws were per rank.*1 per-rank RNG states.*new --out"):
        train(small("E", 4), tmp_path / "E", steps=2 * STEPS, resume=True, progress=False, device="cpu")


def test_workflow_passes_grad_accum_per_run(tmp_path):
    """Config train_grad_accum {RUN: K} becomes `hdit train --grad-accum K` for that run alone; unknown runs are
    refused while the DAG is built."""
    config = (ROOT / "workflows" / "config" / "default.yaml").read_text()
    base = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n", "-p",
            "results/runs/default/E/done.json", "results/runs/default/D/done.json", "--configfile"]
    runs = {}
    for accum in ("{E: 2}", "{Q: 2}"):
        (tmp_path / "c.yaml").write_text(f"{config}train_grad_accum: {accum}\n")
        runs[accum] = subprocess.run(base + [str(tmp_path / "c.yaml")], cwd=ROOT, env=ENV, capture_output=True,
                                     text=True)
    good, bad = runs["{E: 2}"], runs["{Q: 2}"]
    assert good.returncode == 0, good.stdout + good.stderr
    commands = {m[1]: m[2] for m in re.finditer(r"-- train --config (\S+) .*?--grad-accum (\d+)", good.stdout)}
    assert commands == {"E": "2", "D": "1"}
    assert bad.returncode != 0 and "train_grad_accum' names run 'Q'" in bad.stdout + bad.stderr
