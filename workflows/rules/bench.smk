# GPU benchmark (docs/PERFORMANCE.md): `snakemake --cores all bench` on a machine with an NVIDIA GPU
# writes results/bench/<device-slug>.json (hdit bench --device cuda: training img/s, forward latency and
# memory, 128..1024 px scaling, DPM++(3M) sampling). Without a GPU the target stops with a message.
# results/bench/cpu-quick.json (labelled CPU, default-profile models) is made by `bench_cpu_quick`.
from hdit.provenance import nvidia_gpu_slug

BENCH_DIR = f"{RES}/bench"
BENCH_GPU = nvidia_gpu_slug()


rule bench:
    input:
        [f"{BENCH_DIR}/{BENCH_GPU}.json"] if BENCH_GPU else [],
    log:
        f"{LOGS}/bench/bench.log",
    run:
        if not BENCH_GPU:
            raise WorkflowError("target 'bench' needs an NVIDIA GPU (nvidia-smi found none on this machine); "
                                "the CPU benchmark is `snakemake bench_cpu_quick` or "
                                "`hdit bench --device cpu --quick`")
        shell("echo 'benchmark written: {input}' > {log}")


rule bench_gpu:
    output:
        f"{BENCH_DIR}/{{gpu}}.json",
    wildcard_constraints:
        gpu=re.escape(BENCH_GPU) if BENCH_GPU else "(?!x)x",  # only the GPU that is present
    resources:
        gpu=1,
    log:
        f"{LOGS}/bench/{{gpu}}.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit bench --device cuda --out {output} > {log} 2>&1"


rule bench_cpu_quick:
    output:
        f"{BENCH_DIR}/cpu-quick.json",
    log:
        f"{LOGS}/bench/cpu-quick.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit bench --device cpu --quick --threads 1 --out {output} > {log} 2>&1"


localrules:
    bench,
