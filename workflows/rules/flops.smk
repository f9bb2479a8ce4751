# FLOP counts (fvcore, 1 FLOP = 1 MAC): Table 1's columns and Figure 2's curves at paper scale; the DiffiT
# table's paper-scale column and its as-trained column (the profile's backbones).


rule count_flops:
    output:
        FLOPS,
    params:
        configs=lambda wc: " ".join(FLOP_SETS[wc.name][0]),
        resolutions=lambda wc: " ".join(map(str, FLOP_SETS[wc.name][1])),
        profile=lambda wc: FLOP_SETS[wc.name][2],
    threads: config["threads"]["flops"]
    resources:
        **rule_resources("flops"),
    log:
        f"{LOGS}/flops/{{name}}.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "OMP_NUM_THREADS={threads} hdit flops --configs {params.configs} --resolutions {params.resolutions} "
        "--profile {params.profile} --format json --out {output:q} > {log:q} 2>&1"
