"""`python -m hdit.launch`: how the workflow's train rule starts `hdit train` on one process, one node or many.

    python -m hdit.launch job --nnodes N --nproc-per-node G --log-dir DIR [--attempt A] [--stop-margin S]
                              [--threads T] [--cpus-per-node C] [--gpus-per-node K] -- train --config E ...

One job of the train rule (one SLURM job, or one local Snakemake job) is one `job` call:
- Shape: 1 node x 1 process runs `hdit train` itself; 1 node x G runs `torchrun --standalone` with G processes;
  N > 1 nodes, inside a SLURM allocation, run one task per node with the job's own `srun` (the rule asks the
  SLURM plugin for an `mpi` job, whose shell runs on the first node), and each task (`node`) starts one torchrun
  agent with a c10d rendezvous at the first host of the allocation, on a port derived from the job id so that
  concurrent jobs never meet. Only inside the task are SLURM's node variables visible: the plugin's jobstep
  strips SLURM_* (job id aside) from the rule's environment. Outside SLURM a multi-node run takes this node's
  G processes: the same run, as training is world-size invariant (hdit.train, issue 22).
- Time limit (issue 23): inside SLURM the job's remaining time (squeue %L) minus --stop-margin goes to
  `hdit train --time-budget`: training stops at a step all ranks agree on, writes a checkpoint and exits
  EXIT_STOPPED (75); the workflow continues the run in a new job (Snakemake retries, `--resume`). torchrun
  reports any non-zero worker exit as 1, so every rank records its own exit code (`rank`): the job is
  "stopped" only when every rank of the world stopped, and a failure keeps the failing rank's code.
- Logs: every job writes DIR/<UTC time>-attempt<A>[-slurm<id>].log (the rule's `log:` is removed by a retry).
- A real failure (not 75) leaves DIR/failed.json: the next attempt of the same Snakemake invocation fails at
  once, naming the failed job's log, instead of rerunning a broken run until the retries are spent; attempt 1
  (a new invocation, after a fix) clears it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from hdit.errors import EXIT_STOPPED

FAILED = "failed.json"


def parse_slurm_time(text: str) -> float | None:
    """Seconds of a SLURM duration as squeue prints it ([D-]HH:MM:SS, MM:SS; a bare number is minutes, as in
    sbatch --time); None for UNLIMITED, NOT_SET, INVALID or anything else."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        return None
    if len(parts) == 1:
        parts = [parts[0], "0"]
    h, m, s = [0] * (3 - len(parts)) + [int(p) for p in parts]
    return float(((int(days or 0) * 24 + h) * 60 + m) * 60 + s)


def slurm_time_left(job_id: str) -> float | None:
    """Seconds before this SLURM job's time limit, as slurmctld counts it (None: no limit, or unknown)."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_slurm_time(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


def rendezvous_port(job_id: str) -> int:
    """A c10d port per SLURM job, below Linux's ephemeral range (32768+): concurrent jobs never share one."""
    return 20000 + int(job_id) % 10000


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (n[1-2] -> n1), where the c10d store of the rendezvous runs."""
    r = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return r.stdout.split()[0]


def torchrun(nproc: int, rank_argv: list[str], nnodes: int = 1, endpoint: str | None = None,
             job_id: str | None = None) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`) with `nproc` workers running `rank_argv`."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if endpoint is None:
        cmd += ["--standalone", f"--nproc_per_node={nproc}"]
    else:
        cmd += [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={endpoint}", f"--rdzv_id=hdit-{job_id}"]
    return [*cmd, "-m", "hdit.launch", *rank_argv]


def job_command(a, status_dir: Path, in_slurm: bool) -> tuple[list[str], int]:
    """The command of this job's shape and the world size it launches."""
    rank_argv = ["rank", "--status-dir", str(status_dir), "--", *a.hdit]
    if a.nnodes > 1 and in_slurm:
        srun = ["srun", f"--nodes={a.nnodes}", f"--ntasks={a.nnodes}", "--ntasks-per-node=1",
                f"--cpus-per-task={a.cpus_per_node or a.threads * a.nproc_per_node}", "--wait=300", "--label"]
        if a.gpus_per_node:
            srun.append(f"--gpus-per-task={a.gpus_per_node}")
        node = [sys.executable, "-m", "hdit.launch", "node", "--nnodes", str(a.nnodes),
                "--nproc-per-node", str(a.nproc_per_node), "--", *rank_argv]
        return [*srun, *node], a.nnodes * a.nproc_per_node
    if a.nnodes > 1:
        print(f"hdit.launch: no SLURM allocation: the {a.nnodes}-node run trains on this node with "
              f"{a.nproc_per_node} processes (the same run: training is world-size invariant)", flush=True)
    if a.nproc_per_node == 1:
        return [sys.executable, "-m", "hdit.cli", *a.hdit], 1
    return torchrun(a.nproc_per_node, rank_argv), a.nproc_per_node


def time_budget(margin: float, job_id: str | None) -> int | None:
    """`hdit train --time-budget`: the SLURM job's time left minus the margin (None outside SLURM / no limit)."""
    left = slurm_time_left(job_id) if job_id else None
    if left is None:
        return None
    if left - margin < 1:
        raise SystemExit(f"hdit.launch: error: SLURM job {job_id} has {left:.0f} s left, not more than the stop "
                         f"margin of {margin:.0f} s: raise the train rule's runtime or lower "
                         "training_jobs.stop_margin_s in the workflow config")
    return int(left - margin)


def fail_fast(log_dir: Path, attempt: int) -> str | None:
    """The failure an earlier attempt of this invocation recorded (then this one must not train), else None."""
    marker = log_dir / FAILED
    if attempt <= 1:
        marker.unlink(missing_ok=True)  # a new invocation: the user may have fixed what failed
        return None
    if not marker.exists():
        return None
    f = json.loads(marker.read_text())
    return (f"hdit.launch: error: attempt {f['attempt']} of this run failed with exit code {f['code']} (not a stop "
            f"at the time limit), see {f['log']}; not training again. Fix it and rerun the workflow.")


def run_teed(cmd: list[str], env: dict, log: Path) -> int:
    """Run `cmd`, its output to stdout (the rule's log) and to this job's own log; signals reach it directly
    (SLURM signals every process of the step, Snakemake the process group), so they are only noted here."""
    previous = {s: signal.signal(s, lambda n, f: None) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with open(log, "a", buffering=1) as out:
            out.write(f"$ {' '.join(cmd)}\n")
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1)
            for line in p.stdout:
                sys.stdout.write(line)
                out.write(line)
            return p.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ranks_code(code: int, status_dir: Path, world: int) -> int:
    """The job's exit code from the ranks' own: torchrun reports any non-zero worker exit as 1, so a stop of every
    rank is EXIT_STOPPED again, and a failure is the first failing rank's code (2: bad input) where recorded."""
    codes = {int(p.stem.split("-")[1]): int(p.read_text()) for p in status_dir.glob("rank-*.exit")}
    if code == 0 or world == 1:
        return code
    if len(codes) == world and set(codes.values()) == {EXIT_STOPPED}:
        return EXIT_STOPPED
    failed = [c for _, c in sorted(codes.items()) if c not in (0, EXIT_STOPPED)]
    return failed[0] if failed else code


def job_main(a) -> int:
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    job_id = os.environ.get("SLURM_JOB_ID")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"{stamp}-attempt{a.attempt}" + (f"-slurm{job_id}" if job_id else "")
    log, status_dir = log_dir / f"{name}.log", log_dir / f"{name}.ranks"
    print(f"hdit.launch: this job's log: {log}", flush=True)
    refused = fail_fast(log_dir, a.attempt)
    if refused:
        print(refused, file=sys.stderr)
        log.write_text(refused + "\n")
        return 1
    try:
        budget = time_budget(a.stop_margin, job_id)
    except SystemExit as e:
        code, message = 2, str(e)
        print(message, file=sys.stderr)
        log.write_text(message + "\n")
    else:
        cmd, world = job_command(a, status_dir, in_slurm=job_id is not None)
        if budget is not None:
            cmd += ["--time-budget", str(budget)]
        status_dir.mkdir()
        code = ranks_code(run_teed(cmd, {**os.environ, "OMP_NUM_THREADS": str(a.threads)}, log), status_dir, world)
    outcome = {0: "finished", EXIT_STOPPED: "stopped at an agreed step with a checkpoint (exit 75): the "
               "workflow continues the run in a new job with --resume"}.get(code, f"failed with exit code {code}")
    with open(log, "a") as out:
        out.write(f"hdit.launch: attempt {a.attempt}: {outcome}\n")
    print(f"hdit.launch: attempt {a.attempt}: {outcome}", flush=True)
    if code not in (0, EXIT_STOPPED):
        (log_dir / FAILED).write_text(json.dumps({"attempt": a.attempt, "code": code, "log": str(log)}))
    return code


def node_main(a) -> int:
    """One SLURM task per node: the torchrun agent of this node, rendezvous at the allocation's first host."""
    job_id = os.environ["SLURM_JOB_ID"]
    endpoint = f"{first_host(os.environ['SLURM_JOB_NODELIST'])}:{rendezvous_port(job_id)}"
    cmd = torchrun(a.nproc_per_node, a.rest, a.nnodes, endpoint, job_id)
    print(f"hdit.launch: node {os.environ.get('SLURMD_NODENAME', '?')} (node {os.environ.get('SLURM_NODEID', '?')} "
          f"of {a.nnodes}): torchrun agent with {a.nproc_per_node} processes, rendezvous at {endpoint}", flush=True)
    os.execv(cmd[0], cmd)


def rank_main(a) -> int:
    """One training process under torchrun: `hdit ...` in this process, its exit code recorded for the job."""
    from hdit.cli import main as hdit_main

    try:
        code = hdit_main(a.rest)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    (Path(a.status_dir) / f"rank-{os.environ.get('RANK', '0')}.exit").write_text(str(code))
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hdit.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="one job of the train rule")
    job.add_argument("--nnodes", type=int, default=1)
    job.add_argument("--nproc-per-node", type=int, default=1)
    job.add_argument("--threads", type=int, default=1, help="threads per process (OMP_NUM_THREADS)")
    job.add_argument("--cpus-per-node", type=int, default=None, help="CPUs of each node's task (multi-node)")
    job.add_argument("--gpus-per-node", type=int, default=0, help="GPUs of each node's task (multi-node)")
    job.add_argument("--log-dir", required=True, help="per-job logs and the failure marker")
    job.add_argument("--attempt", type=int, default=1, help="Snakemake's attempt of this job (1 = first)")
    job.add_argument("--stop-margin", type=float, default=600.0, help="seconds kept before a SLURM time limit")
    node = sub.add_parser("node", help="(inside an srun task) this node's torchrun agent")
    node.add_argument("--nnodes", type=int, required=True)
    node.add_argument("--nproc-per-node", type=int, required=True)
    rank = sub.add_parser("rank", help="(under torchrun) one training process")
    rank.add_argument("--status-dir", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    head, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = build_parser().parse_args(head)
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
           if k in ("nnodes", "nproc_per_node", "threads", "attempt") and v < 1]
    if bad or not rest:
        print(f"python -m hdit.launch: error: {', '.join(bad) or 'no hdit command after --'}; expected positive "
              "counts and `-- train ...`", file=sys.stderr)
        return 2
    a.rest = a.hdit = rest
    return {"job": job_main, "node": node_main, "rank": rank_main}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
