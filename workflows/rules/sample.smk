# Sampling from a finished run (DPM++(3M) SDE; R1: DDPM) -- the sampler and its steps come from the
# run's resolved config, n from the profile. meta.json is written last, so it marks a complete set.


rule sample:
    input:
        f"{RUN_DIR}/done.json",
    output:
        f"{SAMPLE_DIR}/meta.json",
    params:
        run_dir=lambda wc, input: os.path.dirname(input[0]),
        out=lambda wc, output: os.path.dirname(output[0]),
        device=config["device"],
        compile="--compile" if config["compile"]["sample"] else "",
    threads: config["threads"]["sample"]
    # Guided sampling runs two forwards per step (cond + uncond): start those longer jobs first, so the
    # short ones fill the gaps at the end (longest-processing-time-first packing of Figure 9's sweep).
    priority: lambda wc: 0 if float(wc.cfg) == NO_CFG else 1
    resources:
        **rule_resources("sample"),
    log:
        f"{LOGS}/sample/{{run}}-seed{{seed}}-cfg{{cfg}}-n{{n}}-steps{{steps}}.log",
    benchmark:
        f"{LOGS}/benchmarks/sample/{{run}}-seed{{seed}}-cfg{{cfg}}-n{{n}}-steps{{steps}}.tsv"
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} hdit sample --run {params.run_dir:q} --n {wildcards.n} --seed {wildcards.seed} "
        "--cfg-scale {wildcards.cfg} --steps {wildcards.steps} --out {params.out:q} --device {params.device} {params.compile} "
        "> {log:q} 2>&1"
