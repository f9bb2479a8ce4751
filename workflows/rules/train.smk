# Training. Only done.json is declared: checkpoint.pt stays undeclared so Snakemake never deletes resume
# state when a job fails or is killed; `--resume` continues from it (or starts fresh if there is none).
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
    params:
        run_dir=lambda wc, output: os.path.dirname(output[0]),
        profile=P,
        launcher=launcher(),
        data=data_path,
        device=config["device"],
        grad_accum=lambda wc: config.get("train_grad_accum", {}).get(wc.run, 1),
        signature=training_signature,
        compile="--compile" if config["compile"]["train"] else "",
    threads: train_threads
    resources:
        **rule_resources("train"),
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train/{{run}}.tsv"
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} train --config {wildcards.run} --profile {params.profile} "
        "--out {params.run_dir:q} --resume --device {params.device} --grad-accum {params.grad_accum} {params.compile} {params.data} "
        "> {log:q} 2>&1"
