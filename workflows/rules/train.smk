# Training. Only done.json is declared: checkpoint.pt stays undeclared so Snakemake never deletes resume
# state when a job fails or is killed; `--resume` continues from it (or starts fresh if there is none).
# A job that stops before its SLURM time limit (hdit.launch: exit 75, checkpoint written) is retried: the next
# job resumes, up to training_jobs.max_jobs jobs. Each job's own log is kept in LOGS/train/RUN.jobs/ (a retry
# removes the rule's `log:`). A run on several nodes is the same rule as an `mpi` job (train_multinode).
# config train_grad_accum {RUN: K} passes --grad-accum K (the same run, in K micro-batches per process).

for _run, _k in config.get("train_grad_accum", {}).items():
    if _run not in REGISTRY:
        raise WorkflowError(f"config 'train_grad_accum' names run {_run!r}, which is not a config ID; expected "
                            f"one of {sorted(REGISTRY)}")


rule train:
    input:
        dataset=dataset_input(lambda wc: resolved(wc.run).data),
    output:
        f"{RUN_DIR}/done.json",
    wildcard_constraints:
        run=runs_pattern(SINGLE_NODE_RUNS),
    params:
        run_dir=lambda wc, output: os.path.dirname(output[0]),
        profile=P,
        launcher=launcher,
        data=data_path,
        device=config["device"],
        grad_accum=lambda wc: config.get("train_grad_accum", {}).get(wc.run, 1),
        signature=training_signature,
        compile="--compile" if config["compile"]["train"] else "",
    threads: train_threads
    resources:
        **train_resources(multinode=False),
    retries: train_retries()
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train/{{run}}.tsv"
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} --attempt {resources.attempt} -- "
        "train --config {wildcards.run} --profile {params.profile} --out {params.run_dir:q} --resume "
        "--device {params.device} --grad-accum {params.grad_accum} {params.compile} {params.data} > {log:q} 2>&1"


use rule train as train_multinode with:
    wildcard_constraints:
        run=runs_pattern(MULTINODE_RUNS),
    resources:
        **train_resources(multinode=True),
