# FLOP counts at paper scale (fvcore, 1 FLOP = 1 MAC): Table 1's columns and Figure 2's curves.


rule count_flops:
    output:
        FLOPS,
    params:
        configs=lambda wc: " ".join(FLOP_SETS[wc.name][0]),
        resolutions=lambda wc: " ".join(map(str, FLOP_SETS[wc.name][1])),
    threads: config["threads"]["flops"]
    resources:
        **rule_resources("flops"),
    log:
        f"{LOGS}/flops/{{name}}.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} hdit flops --configs {params.configs} --resolutions {params.resolutions} "
        "--format json --out {output} > {log} 2>&1"
