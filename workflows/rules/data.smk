# FID reference sets: the training distribution of a (dataset, resolution) exported as .npz shards.
# Default profile: the embedded 'shapes' data; paper profile: a preprocessed export of ImageNet / FFHQ.


rule export_reference:
    output:
        directory(REF_DIR),
    params:
        source=export_source,
        n=reference_n,
    threads: config["threads"]["export"]
    resources:
        **rule_resources("export"),
    log:
        f"{LOGS}/export/{{dataset}}-{{resolution}}.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} hdit data export --dataset {wildcards.dataset} {params.source} "
        "--resolution {wildcards.resolution} --n {params.n} --split train --out {output} > {log} 2>&1"
