# Scoring. The reference statistics of a (dataset, resolution) are computed once from the training split
# itself, as the ADM evaluation suite (`hdit refstats`: whole split, or a seeded class-stratified subset of
# reference_n images; streamed, resumable, cached by content under results/cache), then `hdit fid` scores
# each sample set against them, then the metrics JSON gets its provenance from `hdit report metrics`.


rule reference_stats:
    input:
        dataset=dataset_input(lambda wc: DataConfig(wc.dataset, int(wc.resolution))),
    output:
        REF_STATS,
    params:
        source=reference_source,
        mode=PROFILE.fid_mode,
        device=config["device"],
        cache=STATS_CACHE,
    threads: config["threads"]["fid"]
    resources:
        **rule_resources("fid"),
    log:
        f"{LOGS}/fid/reference-{{dataset}}-{{resolution}}.log",
    benchmark:
        f"{LOGS}/benchmarks/fid/reference-{{dataset}}-{{resolution}}.tsv"
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} hdit refstats --dataset {wildcards.dataset} {params.source} "
        "--resolution {wildcards.resolution} --mode {params.mode} --device {params.device} "
        "--cache-dir {params.cache:q} --out {output:q} > {log:q} 2>&1"


rule fid:
    input:
        samples=sample_meta,
        stats=reference_stats_of,
    output:
        RAW_METRICS,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        inception=lambda wc: "--is-if-available" if wc.inception else "",
        n_flag=fid_count,
        mode=PROFILE.fid_mode,
        device=config["device"],
    threads: config["threads"]["fid"]
    resources:
        **rule_resources("fid"),
    log:
        f"{LOGS}/fid/{{run}}-seed{{seed}}-cfg{{cfg}}-fid{{n}}{{inception}}.log",
    benchmark:
        f"{LOGS}/benchmarks/fid/{{run}}-seed{{seed}}-cfg{{cfg}}-fid{{n}}{{inception}}.tsv"
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} hdit fid --samples {params.samples:q} --ref {input.stats:q} {params.n_flag} "
        "{params.inception} --mode {params.mode} --device {params.device} --format json --out {output:q} > {log:q} 2>&1"


rule annotate_metrics:
    input:
        fid=RAW_METRICS,
        samples=sample_meta,
        done=f"{RUN_DIR}/done.json",
    output:
        METRICS,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        run_dir=lambda wc, input: os.path.dirname(input.done),
        profile=P,
    log:
        f"{LOGS}/metrics/{{run}}-seed{{seed}}-cfg{{cfg}}-fid{{n}}{{inception}}.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report metrics --fid {input.fid:q} --samples {params.samples:q} --run {params.run_dir:q} "
        "--profile {params.profile} --out {output:q} > {log:q} 2>&1"


# Class accuracy (default profile, class-conditional runs on the embedded shapes data): a small CNN trained once
# on the shapes training split (cached by content under results/cache/classifier), then every sample set is
# scored as the fraction of samples classified as their conditioning class (`hdit classify`).


rule classifier:
    output:
        CLASSIFIER,
    params:
        cache=CLASSIFIER_CACHE,
    threads: 1  # the classifier is trained with one thread (its weights depend on the thread count)
    log:
        f"{LOGS}/classify/classifier-shapes-{{resolution}}.log",
    benchmark:
        f"{LOGS}/benchmarks/classify/classifier-shapes-{{resolution}}.tsv"
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} hdit classify --fit --resolution {wildcards.resolution} "
        "--cache-dir {params.cache:q} --out {output:q} > {log:q} 2>&1"


rule class_accuracy:
    input:
        samples=sample_meta,
        classifier=classifier_of,
    output:
        CLASSACC,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        cache=CLASSIFIER_CACHE,
    threads: 1
    log:
        f"{LOGS}/classify/{{run}}-seed{{seed}}-cfg{{cfg}}-n{{n}}.log",
    benchmark:
        f"{LOGS}/benchmarks/classify/{{run}}-seed{{seed}}-cfg{{cfg}}-n{{n}}.tsv"
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} hdit classify --samples {params.samples:q} --cache-dir {params.cache:q} "
        "--out {output:q} > {log:q} 2>&1"
