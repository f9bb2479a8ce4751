"""A real SLURM cluster on this one machine, for the tests that run the workflow through `--executor slurm`.

    python tests/slurm_local.py install  # as root: Debian's slurmctld slurmd slurm-client munge (apt-get)
    python tests/slurm_local.py up       # install if missing, start munged, slurmctld, two slurmd; wait idle
    python tests/slurm_local.py status   # what runs, or what is missing
    python tests/slurm_local.py down     # stop what `up` started (by the PIDs it recorded), undo its changes

Debian's SLURM (22.05) and munge, with two emulated nodes n1 and n2 on 127.0.0.1 (one slurmd each, its own
port, `%n` in the per-node paths), so a `--nodes=2` job really spans two slurmd and `srun` gives node ids 0
and 1. No slurmdbd: job status comes from `squeue`, which needs MinJobAge well above the plugin's status
intervals (README, "Status without accounting"). Everything the cluster writes lives under STATE (/tmp);
the only files outside it are /etc/slurm/slurm.conf (SLURM's default path, so no SLURM_CONF is needed by
any process the jobs start) and one marked line in /etc/hosts (the rendezvous host of a multi-node job is
taken from the job's node list); `down` removes both. A slurm.conf that this script did not write means
somebody runs a cluster here: `up` then refuses to touch it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("HDIT_SLURM_STATE", "/tmp/hdit-slurm-local"))
PIDS = STATE / "pids.json"
CONF = Path("/etc/slurm/slurm.conf")
HOSTS = Path("/etc/hosts")
MARK = "# written by hdit-repro tests/slurm_local.py"
NODES = {"n1": 16101, "n2": 16102}  # node name -> slurmd port
CTLD_PORT = 16100
MIN_JOB_AGE = 300  # s: >= 3 x the status interval the tests use, and above the plugin's 180 s cap
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("slurmctld", "slurmd", "sinfo", "sbatch", "srun", "squeue", "scontrol", "munged", "munge", "unmunge",
            "mungekey")


def missing() -> list[str]:
    """What keeps this machine from running the local cluster (empty: it can, installing packages if needed)."""
    if sys.platform != "linux":
        return [f"Linux (this is {sys.platform})"]
    why = []
    if os.geteuid() != 0:
        why.append("root (the daemons and /etc/slurm need it; this user is uid %d)" % os.geteuid())
    absent = [c for c in COMMANDS if shutil.which(c) is None]
    if absent and shutil.which("apt-get") is None:
        why.append(f"the commands {', '.join(absent)} (and no apt-get to install {' '.join(PACKAGES)})")
    if CONF.exists() and MARK not in CONF.read_text(errors="replace"):
        why.append(f"a free {CONF} (one exists that this script did not write: a cluster is configured here)")
    return why


def _run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, **kw)


def install() -> None:
    """Debian's packages, only when a command is missing (packages do not start services on this machine)."""
    if all(shutil.which(c) for c in COMMANDS):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], env=env)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], env=env)


def _record(pids: dict) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    PIDS.write_text(json.dumps(pids, indent=1))


def _recorded() -> dict:
    return json.loads(PIDS.read_text()) if PIDS.exists() else {"daemons": {}, "created": []}


def _start(pids: dict, name: str, cmd: list[str], log: Path, user: str | None = None) -> None:
    """Start one daemon in the foreground of its own session and record its PID before anything else."""
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, user=user, group=user)
    pids["daemons"][name] = {"pid": p.pid, "cmd": cmd}
    _record(pids)


def _munge_works() -> bool:
    cred = subprocess.run(["munge", "-n"], capture_output=True)
    return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True).returncode == 0


def start_munge(pids: dict) -> None:
    """munged as the munge user (it refuses root), with a key made here if there is none."""
    if _munge_works():
        return  # somebody's munged already answers: use it, stop nothing of theirs
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        _run(["mungekey", "--create"])
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    _start(pids, "munged", ["munged", "--foreground"], STATE / "munged.out", user="munge")
    _wait(_munge_works, 20, "munged to answer `munge -n | unmunge`")


def _wait(ready, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {STATE}")
        time.sleep(0.5)


def node_hardware() -> str:
    """`CPUs=... RealMemory=...` of this machine as slurmd reports it (each emulated node gets all of it)."""
    fields = dict(f.split("=", 1) for f in _run(["slurmd", "-C"]).stdout.split()[0:20] if "=" in f)
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return " ".join(f"{k}={fields[k]}" for k in keep if k in fields)


def slurm_conf() -> str:
    hw = node_hardware()
    nodes = "\n".join(f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname=localhost Port={port} {hw} State=UNKNOWN"
                      for n, port in NODES.items())
    return f"""{MARK}
ClusterName=hdit-local
SlurmctldHost=localhost
SlurmctldPort={CTLD_PORT}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
KillWait=10
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation={STATE}/ctld
SlurmctldPidFile={STATE}/slurmctld.pid
SlurmctldLogFile={STATE}/slurmctld.log
SlurmdSpoolDir={STATE}/spool-%n
SlurmdPidFile={STATE}/slurmd-%n.pid
SlurmdLogFile={STATE}/slurmd-%n.log
{nodes}
PartitionName=local Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def write_config(pids: dict) -> None:
    """slurm.conf at SLURM's default path, and the node names in /etc/hosts; both recorded for `down`."""
    if not CONF.parent.exists():
        CONF.parent.mkdir(parents=True)
        pids["created"].append(str(CONF.parent))
    CONF.write_text(slurm_conf())
    pids["created"].append(str(CONF))
    lines = HOSTS.read_text().splitlines()
    if not any(line.endswith(MARK) for line in lines):
        HOSTS.write_text("\n".join([*lines, f"127.0.0.1 {' '.join(NODES)} {MARK}"]) + "\n")
    pids["created"].append(str(HOSTS))
    _record(pids)


def nodes_idle() -> bool:
    r = _run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, timeout=10)
    states = dict(line.split() for line in r.stdout.splitlines() if line.strip()) if r.returncode == 0 else {}
    return all(states.get(n, "").startswith("idle") for n in NODES)


def _alive(entry: dict) -> bool:
    """The recorded daemon still runs (and the PID was not reused by another program)."""
    try:
        cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(cmdline[0].decode()) == os.path.basename(entry["cmd"][0])


def up() -> None:
    why = missing()
    if why:
        raise RuntimeError("cannot bring up the local SLURM cluster: needs " + "; ".join(why))
    pids = _recorded()
    if pids["daemons"] and all(_alive(d) for d in pids["daemons"].values()) and nodes_idle():
        return  # already up (a previous `up` without `down`)
    if pids["daemons"]:
        down()
        pids = _recorded()
    install()
    for d in ("ctld", *(f"spool-{n}" for n in NODES)):
        (STATE / d).mkdir(parents=True, exist_ok=True)
    try:
        start_munge(pids)
        write_config(pids)
        _start(pids, "slurmctld", ["slurmctld", "-D", "-c"], STATE / "slurmctld.out")
        for n in NODES:
            _start(pids, f"slurmd-{n}", ["slurmd", "-D", "-N", n], STATE / f"slurmd-{n}.out")
        _wait(nodes_idle, 60, f"`sinfo` to show {', '.join(NODES)} idle")
    except BaseException:
        down()
        raise


def _stop(name: str, entry: dict) -> None:
    if not _alive(entry):
        return
    pid = entry["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 15
        while _alive(entry) and time.monotonic() < end:
            time.sleep(0.2)
        if _alive(entry):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child when `up` ran in this process
    except ChildProcessError:
        pass


def down() -> None:
    """Stop the daemons `up` started (newest first, by recorded PID) and undo its file changes."""
    pids = _recorded()
    for name, entry in reversed(list(pids["daemons"].items())):
        _stop(name, entry)
    created = pids["created"]
    if str(CONF) in created and CONF.exists() and MARK in CONF.read_text(errors="replace"):
        CONF.unlink()
    if str(CONF.parent) in created and CONF.parent.exists() and not any(CONF.parent.iterdir()):
        CONF.parent.rmdir()
    if str(HOSTS) in created:
        lines = HOSTS.read_text().splitlines()
        HOSTS.write_text("\n".join(line for line in lines if not line.endswith(MARK)) + "\n")
    PIDS.unlink(missing_ok=True)


def status() -> str:
    why = missing()
    if why:
        return "cannot run here: needs " + "; ".join(why)
    pids = _recorded()
    running = {n: d["pid"] for n, d in pids["daemons"].items() if _alive(d)}
    return f"daemons started by this script: {running or 'none'}; nodes idle: {bool(running) and nodes_idle()}"


def logs_tail(n: int = 40) -> str:
    """The end of every daemon log (for a failing test's message)."""
    out = []
    for log in sorted(STATE.glob("*.log")):
        out.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-n:]))
    return "\n".join(out)


if __name__ == "__main__":
    def install_checked():
        why = [w for w in missing() if not w.startswith("a free ")]
        if why:
            sys.exit("cannot install the local SLURM cluster's packages: needs " + "; ".join(why))
        install()

    actions = {"install": install_checked, "up": up, "down": down, "status": lambda: print(status())}
    if len(sys.argv) != 2 or sys.argv[1] not in actions:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(actions)}")
    actions[sys.argv[1]]()
