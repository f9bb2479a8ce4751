# Scoring: the reference set's statistics are computed once (cached under results/cache), then `hdit fid`
# scores each sample set against the reference set of the run's (dataset, resolution), then the metrics
# JSON gets its provenance (run, sampler, profile, versions, resolved config) from `hdit report metrics`.


rule reference_stats:
    input:
        REF_DIR,
    output:
        f"{REF_DIR}.fid-stats.json",
    params:
        mode=PROFILE.fid_mode,
        device=config["device"],
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
        "OMP_NUM_THREADS={threads} hdit report refstats --ref {input} --mode {params.mode} --device {params.device} "
        "--out {output} > {log} 2>&1"


rule fid:
    input:
        samples=sample_meta,
        ref=reference_dir,
        stats=lambda wc: reference_dir(wc) + ".fid-stats.json",
    output:
        RAW_METRICS,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        inception=lambda wc: "--is-if-available" if wc.inception else "",
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
        "OMP_NUM_THREADS={threads} hdit fid --samples {params.samples} --ref {input.ref} --n {wildcards.n} "
        "{params.inception} --mode {params.mode} --device {params.device} --format json --out {output} > {log} 2>&1"


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
        "hdit report metrics --fid {input.fid} --samples {params.samples} --run {params.run_dir} "
        "--profile {params.profile} --out {output} > {log} 2>&1"
