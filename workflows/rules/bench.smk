# Benchmarks run only when asked for by name; no other target depends on them, and nothing here looks at the
# machine while the DAG is built.
#   snakemake --cores all bench          on a machine with an NVIDIA GPU: results/bench/<gpu-slug>.json
#                                        (hdit bench --device cuda: training img/s, forward latency and memory,
#                                        128..1024 px scaling, DPM++(3M) sampling; docs/PERFORMANCE.md)
#   snakemake results/bench/<slug>.json  the same, for a named GPU (refused on another one)
#   snakemake bench_cpu_quick            results/bench/cpu-quick.json (labelled CPU, default-profile models)
#   snakemake scaling                    the measured-scaling figure from the JSON in results/bench/
rule bench:
    log:
        f"{LOGS}/bench/bench.log",
    resources:
        gpu=1,
    run:
        out = f"{BENCH_DIR}/{present_gpu()}.json"
        shell("hdit bench --device cuda --out {out:q} > {log:q} 2>&1")


rule bench_gpu:
    output:
        f"{BENCH_DIR}/{{gpu}}.json",
    wildcard_constraints:
        gpu=r"(?!cpu-quick$)[\w.-]+",
    resources:
        gpu=1,
    log:
        f"{LOGS}/bench/{{gpu}}.log",
    run:
        if present_gpu() != wildcards.gpu:
            raise WorkflowError(f"{output[0]} is the benchmark of GPU {wildcards.gpu!r}; this machine has "
                                f"{present_gpu()!r}")
        shell("hdit bench --device cuda --out {output:q} > {log:q} 2>&1")


rule bench_cpu_quick:
    output:
        f"{BENCH_DIR}/cpu-quick.json",
    log:
        f"{LOGS}/bench/cpu-quick.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit bench --device cpu --quick --threads 1 --out {output:q} > {log:q} 2>&1"


localrules:
    bench,
