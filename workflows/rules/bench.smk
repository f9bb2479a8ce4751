# GPU benchmark (docs/PERFORMANCE.md): `snakemake --cores all bench` on a machine with an NVIDIA GPU
# writes results/bench/<device-slug>.json (hdit bench --device cuda: training img/s, forward latency and
# memory, 128..1024 px scaling, DPM++(3M) sampling). Without a GPU the target stops with a message.
# results/bench/cpu-quick.json (labelled CPU, default-profile models) is made by `bench_cpu_quick`.
import re
import shutil
import subprocess

BENCH_DIR = f"{RES}/bench"


def gpu_slug():
    """The first GPU's name as a file slug (same rule as hdit.bench.device_slug), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    names = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return re.sub(r"[^a-z0-9]+", "-", names[0].lower()).strip("-") if names else None


BENCH_GPU = gpu_slug()


rule bench:
    input:
        [f"{BENCH_DIR}/{BENCH_GPU}.json"] if BENCH_GPU else [],
    run:
        if not BENCH_GPU:
            raise WorkflowError("target 'bench' needs an NVIDIA GPU (nvidia-smi found none on this machine); "
                                "the CPU benchmark is `snakemake bench_cpu_quick` or "
                                "`hdit bench --device cpu --quick`")


rule bench_gpu:
    output:
        f"{BENCH_DIR}/{{gpu}}.json",
    wildcard_constraints:
        gpu=re.escape(BENCH_GPU) if BENCH_GPU else "(?!x)x",  # only the GPU that is present
    resources:
        gpu=1,
    log:
        f"{LOGS}/bench/{{gpu}}.log",
    shell:
        "hdit bench --device cuda --out {output} > {log} 2>&1"


rule bench_cpu_quick:
    output:
        f"{BENCH_DIR}/cpu-quick.json",
    log:
        f"{LOGS}/bench/cpu-quick.log",
    shell:
        "hdit bench --device cpu --quick --threads 1 --out {output} > {log} 2>&1"


localrules:
    bench,
