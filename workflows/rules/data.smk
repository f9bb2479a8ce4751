# Data preparation: the training split of a dataset ADM-cropped once at a resolution (`hdit data prepare`), for
# the training runs and reference statistics that read it when datasets.<name>.prepared is true (input
# function `dataset_input`). Only the manifest (written last) is declared: the chunks of a killed job stay and
# the rerun continues from them. --replace: a job rerun for a changed source path (params) prepares it again.


rule prepare_dataset:
    input:
        dataset=dataset_check(lambda wc: wc.dataset),
    output:
        f"{PREPARED}/manifest.json",
    params:
        source=lambda wc: checked_dataset_path(wc.dataset),
        out=lambda wc, output: os.path.dirname(output[0]),
    threads: config["threads"]["export"]
    resources:
        **rule_resources("export"),
    log:
        f"{LOGS}/prepare/{{dataset}}-{{resolution}}.log",
    benchmark:
        f"{LOGS}/benchmarks/prepare/{{dataset}}-{{resolution}}.tsv"
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit data prepare --dataset {wildcards.dataset:q} --data {params.source:q} --resolution "
        "{wildcards.resolution} --out {params.out:q} --workers {threads} --replace --quiet > {log:q} 2>&1"
