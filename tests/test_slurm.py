"""The workflow on a real SLURM cluster (issue 23): `snakemake --executor slurm` against SLURM 22.05 brought up on
this machine by tests/slurm_local.py (two emulated nodes, no accounting: job status from squeue), and the launch
shapes of hdit.launch.

- a paper-smoke 128-px row (E, full size) trains as ONE job on two nodes (one CPU process each, gloo, c10d
  rendezvous at the first node), is sampled and scored; its weights equal the same row trained by one process;
- a run whose jobs have a 1-minute limit stops before it (a checkpoint, exit 75) and continues in new jobs until
  it is done, by itself; the weights equal an uninterrupted run's, bitwise; every job keeps its own log;
- a failing training job is reported, Snakemake exits non-zero without hanging, and its retry fails at once.

They need root (daemons, /etc/slurm) and Debian's slurmctld, slurmd, slurm-client and munge (.ci/run installs
them). Elsewhere they are skipped, naming what is missing; with HDIT_REQUIRE_SLURM=1 (CI) a missing
prerequisite fails them instead.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import slurm_local
from hdit.errors import EXIT_STOPPED

ROOT = Path(__file__).resolve().parent.parent
REQUIRE = os.environ.get("HDIT_REQUIRE_SLURM") == "1"
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SBATCH_"))},
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
TOL = 1e-6  # 1 process vs 2: the rounding of the gradient reduction (tests/test_distributed.py measures ~1e-8)


@pytest.fixture(scope="module")
def cluster():
    why = slurm_local.missing()
    absent = [c for c in slurm_local.COMMANDS if not shutil.which(c)]
    if absent and not REQUIRE:
        why.append(f"the commands {', '.join(absent)} (as root: `python tests/slurm_local.py up` installs them)")
    if why:
        message = "a local SLURM cluster needs " + "; ".join(why)
        if REQUIRE:
            pytest.fail(message + " (HDIT_REQUIRE_SLURM=1: these tests may not be skipped)")
        pytest.skip(message)
    was_up = slurm_local.PIDS.exists() and slurm_local.nodes_idle()
    slurm_local.up()
    yield
    if not was_up:
        slurm_local.down()


def write_config(tmp_path, base: str, **changes) -> Path:
    cfg = yaml.safe_load((ROOT / "workflows" / "config" / base).read_text())
    cfg.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def slurm_snakemake(work, config, *targets, timeout):
    """The workflow through the SLURM profile (status from squeue), polling every few seconds."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
           "--workflow-profile", str(ROOT / "workflows" / "profiles" / "slurm"), "--configfile", str(config),
           "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5", *targets]
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"snakemake --executor slurm still running after {timeout} s:\n{e.stdout}\n{e.stderr}\n"
                    f"{slurm_local.logs_tail()}")
    return r


def job_logs(work, profile, run):
    return sorted((work / "results" / "logs" / profile / "train" / f"{run}.jobs").glob("*.log"))


def hdit_train(work, *args):
    """`hdit train` by one local process (one thread, as the workflow's training jobs)."""
    r = subprocess.run([sys.executable, "-m", "hdit.cli", "train", "--threads", "1", *args], cwd=work, capture_output=True,
                       text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def weights(run_dir):
    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    return ckpt["step"], {f"{k}.{n}": t for k in ("model", "ema") for n, t in ckpt[k].items()}


def max_diff(dir_a, dir_b) -> float:
    (step_a, a), (step_b, b) = weights(dir_a), weights(dir_b)
    assert step_a == step_b and a.keys() == b.keys()
    return max((a[n].double() - b[n].double()).abs().max().item() for n in a)


@pytest.mark.slow
def test_run_longer_than_its_jobs_continues_in_new_jobs_until_done(cluster, tmp_path):
    """smoke-profile imagenet-256 (40 steps, ~25-60 s of training on 2 cores) in jobs of a 1-minute limit that stop
    40 s before it: ~10-15 s of training each (the jobstep's own start-up takes the rest), so 2-6 jobs."""
    config = write_config(tmp_path, "default.yaml", profile="smoke", training_jobs={"max_jobs": 15, "stop_margin_s": 40},
                          resources={"train": {"runtime": 1, "mem_mb": 2000}})
    r = slurm_snakemake(tmp_path, config, "results/runs/smoke/imagenet-256/done.json", timeout=1200)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    paths = job_logs(tmp_path, "smoke", "imagenet-256")
    logs = [p.read_text() for p in paths]
    assert len(logs) >= 2, logs
    assert len({re.search(r"-slurm(\d+)\.log$", str(p))[1] for p in paths}) == len(logs)  # one SLURM job each
    # every job but the last stopped itself before its limit, with a checkpoint; only the last one finished
    assert all("--time-budget " in t for t in logs)
    assert all("(exit 75)" in t and "continue with --resume" in t for t in logs[:-1])
    assert "hdit.launch: attempt %d: finished" % len(logs) in logs[-1]
    done = json.loads((tmp_path / "results/runs/smoke/imagenet-256/done.json").read_text())
    assert done["step"] == 40 and done["resumed_from_step"] > 0
    hdit_train(tmp_path, "--config", "imagenet-256", "--profile", "smoke", "--out", "straight", "--device", "cpu",
               "--no-progress")
    assert max_diff(tmp_path / "straight", tmp_path / "results/runs/smoke/imagenet-256") == 0.0


@pytest.mark.slow
def test_failing_training_job_is_reported_and_its_retry_fails_at_once(cluster, tmp_path):
    config = write_config(tmp_path, "default.yaml", profile="smoke", training_jobs={"max_jobs": 2, "stop_margin_s": 30})
    run_dir = tmp_path / "results/runs/smoke/E"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")  # a damaged resume state: `hdit train` exits 2
    r = slurm_snakemake(tmp_path, config, "results/runs/smoke/E/done.json", timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Error in rule train" in out and "FAILED" in out, out[-5000:]
    first, second = (p.read_text() for p in job_logs(tmp_path, "smoke", "E"))
    assert "checkpoint.pt" in first and "attempt 1: failed with exit code 2" in first
    assert "attempt 1 of this run failed with exit code 2" in second and "not training again" in second
    assert "$ " not in second  # the second job never started a trainer
    assert not (run_dir / "done.json").exists()


# ----------------------------------------------------------------------------- without a cluster

def test_missing_prerequisites_are_named(monkeypatch, tmp_path):
    """What the skip (or, under HDIT_REQUIRE_SLURM=1, the failure) says: no root, a cluster configured here."""
    monkeypatch.setattr(slurm_local.os, "geteuid", lambda: 1000)
    foreign = tmp_path / "slurm.conf"
    foreign.write_text("ClusterName=theirs\n")
    monkeypatch.setattr(slurm_local, "CONF", foreign)
    why = slurm_local.missing()
    assert any(w.startswith("root") and "uid 1000" in w for w in why)
    assert any(str(foreign) in w and "did not write" in w for w in why)


def test_slurm_durations_are_read_as_squeue_prints_them():
    from hdit.launch import parse_slurm_time

    assert parse_slurm_time("1-02:03:04") == 93784 and parse_slurm_time("02:03:04") == 7384
    assert parse_slurm_time("0:45") == 45 and parse_slurm_time("10") == 600  # a bare number is minutes
    assert all(parse_slurm_time(t) is None for t in ("UNLIMITED", "NOT_SET", "INVALID", "", "1:2:3:4"))


def test_launch_shapes():
    from types import SimpleNamespace

    from hdit.launch import job_command, rendezvous_port

    def shape(nnodes, nproc, in_slurm):
        a = SimpleNamespace(nnodes=nnodes, nproc_per_node=nproc, threads=4, cpus_per_node=None, gpus_per_node=nproc,
                            hdit=["train", "--config", "E"])
        return job_command(a, Path("ranks"), in_slurm)

    cmd, world = shape(1, 1, True)
    assert cmd[1:] == ["-m", "hdit.cli", "train", "--config", "E"] and world == 1  # `hdit train` itself
    cmd, world = shape(1, 8, True)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8"] and world == 8
    cmd, world = shape(8, 8, True)
    assert cmd[:8] == ["srun", "--nodes=8", "--ntasks=8", "--ntasks-per-node=1", "--cpus-per-task=32",
                       "--wait=300", "--label", "--gpus-per-task=8"] and world == 64
    assert cmd[9:16] == ["-m", "hdit.launch", "node", "--nnodes", "8", "--nproc-per-node", "8"]
    cmd, world = shape(8, 8, False)  # no allocation: this node's 8 processes
    assert "--standalone" in cmd and world == 8
    assert rendezvous_port("12345") != rendezvous_port("12346") and 20000 <= rendezvous_port("99999") < 32768


def test_time_budget_is_the_jobs_time_left_minus_the_margin(monkeypatch):
    import hdit.launch as launch

    monkeypatch.setattr(launch, "slurm_time_left", lambda job: 3600.0)
    assert launch.time_budget(600, "7") == 3000 and launch.time_budget(600, None) is None
    with pytest.raises(SystemExit, match="has 3600 s left, not more than the stop margin of 4000 s"):
        launch.time_budget(4000, "7")
    monkeypatch.setattr(launch, "slurm_time_left", lambda job: None)  # no limit
    assert launch.time_budget(600, "7") is None


@pytest.mark.slow
def test_stop_through_torchrun_is_exit_75_and_a_real_failure_is_not_retried(tmp_path):
    """torchrun turns the ranks' exit 75 into 1: the job still says "stopped" (every rank recorded 75), the next
    attempt resumes and finishes; a real failure leaves the marker that makes the following attempt refuse."""
    def job(attempt, *train):
        cmd = [sys.executable, "-m", "hdit.launch", "job", "--nproc-per-node", "2", "--log-dir", str(tmp_path / "logs"),
               "--attempt", str(attempt), "--", "train", "--config", "E", "--profile", "smoke", "--out",
               str(tmp_path / "run"), "--device", "cpu", "--no-progress", "--resume", *train]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)

    r = job(1, "--time-budget", "0.01")
    assert r.returncode == EXIT_STOPPED, r.stdout[-3000:] + r.stderr[-3000:]
    assert "exit code: 1" not in r.stdout and "stopped at an agreed step" in r.stdout
    r = job(2)
    assert r.returncode == 0 and "attempt 2: finished" in r.stdout, r.stdout[-3000:]
    assert json.loads((tmp_path / "run" / "done.json").read_text())["step"] == 40
    assert len(list((tmp_path / "logs").glob("*.log"))) == 2 and not (tmp_path / "logs" / "failed.json").exists()
    r = job(1, "--grad-accum", "3")  # batch 16 per rank is not divisible by 3: a real failure (exit 2)
    assert r.returncode == 2 and (tmp_path / "logs" / "failed.json").exists()
    r = job(2, "--grad-accum", "3")
    assert r.returncode == 1 and "attempt 1 of this run failed with exit code 2" in r.stderr


def test_a_new_invocation_clears_the_failure_marker(tmp_path):
    from hdit.launch import FAILED, fail_fast

    (tmp_path / FAILED).write_text(json.dumps({"attempt": 1, "code": 2, "log": "L"}))
    assert "attempt 1 of this run failed with exit code 2 (not a stop at the time limit), see L" in fail_fast(tmp_path, 3)
    assert fail_fast(tmp_path, 1) is None and not (tmp_path / FAILED).exists()  # attempt 1: a new invocation
    assert fail_fast(tmp_path, 2) is None


def test_slurm_dry_run_shows_ffhq_1024_as_one_eight_node_job(tmp_path):
    """paper.yaml under the SLURM profile: FFHQ-1024 is one `mpi` job on 8 nodes x 8 GPUs, a 128-px row one node
    with 4, ImageNet-256 one node with 8."""
    (tmp_path / "imagenet" / "n01440764").mkdir(parents=True)
    (tmp_path / "ffhq").mkdir()
    (tmp_path / "ffhq" / "00000.png").write_bytes(b"")
    config = write_config(tmp_path, "paper.yaml", datasets={
        "imagenet": {"path": str(tmp_path / "imagenet"), "reference_n": None},
        "ffhq": {"path": str(tmp_path / "ffhq"), "reference_n": None}})
    targets = [f"results/runs/paper/{run}/done.json" for run in ("ffhq-1024", "E", "imagenet-256")]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n", "-p",
           *targets, "--workflow-profile", str(ROOT / "workflows/profiles/slurm"), "--configfile", str(config)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    blocks = {re.search(r"wildcards: run=(\S+)", b)[1]: b for b in re.split(r"\n(?=\[.*\]\nrule )", r.stdout)
              if "wildcards: run=" in b}
    ffhq = blocks["ffhq-1024"]
    assert "rule train_multinode:" in ffhq
    for resource in ("gpu=64", "nodes=8", "cpus_per_task=64", "mpi=srun", "tasks=8", "tasks_per_gpu=0", "runtime=1440"):
        assert re.search(rf"\b{resource}(,|$)", ffhq, re.M), (resource, ffhq)
    assert "hdit.launch job --nnodes 8 --nproc-per-node 8 " in ffhq and "--stop-margin 1200" in ffhq
    for run, gpus in (("E", 4), ("imagenet-256", 8)):
        assert "rule train:" in blocks[run] and "mpi=" not in blocks[run]
        assert f"gpu={gpus}," in blocks[run] and "nodes=1," in blocks[run]
        assert f"--nnodes 1 --nproc-per-node {gpus} " in blocks[run]


# last in the module: it may wait for tests/test_paper_smoke.py's DAG to leave the machine's memory
@pytest.mark.slow
def test_paper_smoke_row_trains_as_one_two_node_job_then_is_sampled_and_scored(cluster, tmp_path, memory_heavy):
    with memory_heavy():  # two paper-size processes: not beside tests/test_paper_smoke.py's DAG
        two_node_row(tmp_path)


def two_node_row(tmp_path):
    synth = [sys.executable, "-m", "hdit.cli", "data", "synth", "--layout", "imagenet", "--classes", "1000",
             "--size", "32x24", "--out", "synth/imagenet-train"]
    subprocess.run(synth, cwd=tmp_path, check=True, capture_output=True, timeout=600, env=ENV)
    (tmp_path / "synth" / "ffhq-1024").mkdir()
    config = write_config(tmp_path, "paper-smoke.yaml", torchrun={"nnodes": 1, "nproc_per_node": 1,
                                                                  "runs": {"E": {"nnodes": 2}}})
    r = slurm_snakemake(tmp_path, config, "results/metrics/paper-smoke/E/seed0-cfg1.0-fid3.json", timeout=900)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    assert re.search(r"rule train_multinode:.*?resources: .*nodes=2.*mpi=srun, tasks=2", r.stdout + r.stderr, re.S)
    (log,) = job_logs(tmp_path, "paper-smoke", "E")  # one SLURM job
    text = log.read_text()
    assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in text
    # one torchrun agent on each emulated node, both meeting at the first one
    assert re.search(r"^0: hdit.launch: node n1 \(node 0 of 2\).*rendezvous at n1:\d+$", text, re.M), text[-3000:]
    assert re.search(r"^1: hdit.launch: node n2 \(node 1 of 2\).*rendezvous at n1:\d+$", text, re.M), text[-3000:]
    assert "hdit.launch: attempt 1: finished" in text
    done = json.loads((tmp_path / "results/runs/paper-smoke/E/done.json").read_text())
    assert done["world_size"] == 2
    metrics = json.loads((tmp_path / "results/metrics/paper-smoke/E/seed0-cfg1.0-fid3.json").read_text())
    assert metrics["n"] == 3 and math.isfinite(metrics["fid"])
    # the same row trained by one local process (batch 2 on one rank, not 1 + 1)
    hdit_train(tmp_path, "--config", "E", "--profile", "paper-smoke", "--out", "local", "--device", "cpu",
               "--data", "synth/imagenet-train", "--no-progress")
    assert max_diff(tmp_path / "local", tmp_path / "results/runs/paper-smoke/E") <= TOL
