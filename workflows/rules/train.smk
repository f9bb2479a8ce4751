# Training. Only done.json is declared: checkpoint.pt stays undeclared so Snakemake never deletes resume
# state when a job fails or is killed; `--resume` continues from it (or starts fresh if there is none).


rule train:
    input:
        dataset=dataset_check(lambda wc: resolved(wc.run).data.name),
    output:
        f"{RUN_DIR}/done.json",
    params:
        run_dir=lambda wc, output: os.path.dirname(output[0]),
        profile=P,
        launcher=launcher(),
        data=data_path,
        device=config["device"],
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
        "--out {params.run_dir} --resume --device {params.device} {params.compile} {params.data} > {log} 2>&1"
