# Tables 1-5, the DiffiT table and Figures 2, 8, 9 (results/tables, results/figures): measured beside the
# paper's values.


rule table1_files:
    input:
        metrics=[metrics_file(c) for c in TABLE1_ROWS],
        flops=FLOPS.format(name="table1"),
    output:
        table_files(1),
    params:
        pairs=metrics_pairs(TABLE1_ROWS),
        profile=P,
        out=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/report/table1.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report table 1 --profile {params.profile} --metrics {params.pairs} --flops {input.flops} "
        "--out-dir {params.out} > {log} 2>&1"


rule table2_files:
    input:
        [metrics_file(c) for c in TABLE2_ROWS],
    output:
        table_files(2),
    params:
        pairs=metrics_pairs(TABLE2_ROWS),
        profile=P,
        out=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/report/table2.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report table 2 --profile {params.profile} --metrics {params.pairs} --out-dir {params.out} > {log} 2>&1"


rule table3_files:
    input:
        small=metrics_file(FFHQ, n=PROFILE.fid_samples_ffhq_small),
        full=metrics_file(FFHQ, n=PROFILE.fid_samples),
    output:
        table_files(3),
    params:
        profile=P,
        out=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/report/table3.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report table 3 --profile {params.profile} --metrics small={input.small} full={input.full} "
        "--out-dir {params.out} > {log} 2>&1"


rule table4_files:
    input:
        metrics_file(IMAGENET256, inception=True),
    output:
        table_files(4),
    params:
        profile=P,
        out=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/report/table4.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report table 4 --profile {params.profile} --metrics {input} --out-dir {params.out} > {log} 2>&1"


rule table5_files:
    input:
        [metrics_file(c) for c in TABLE5_ROWS],
    output:
        table_files(5),
    params:
        pairs=metrics_pairs(TABLE5_ROWS),
        profile=P,
        out=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/report/table5.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report table 5 --profile {params.profile} --metrics {params.pairs} --out-dir {params.out} > {log} 2>&1"


rule table_diffit_files:
    input:
        metrics=[metrics_file(c) for c in TABLE_DIFFIT_ROWS],
        flops=[FLOPS.format(name="table_diffit"), FLOPS.format(name="table_diffit-trained")],
    output:
        table_files("_diffit"),
    params:
        pairs=metrics_pairs(TABLE_DIFFIT_ROWS),
        profile=P,
        out=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/report/table_diffit.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report table diffit --profile {params.profile} --metrics {params.pairs} --flops {input.flops} "
        "--out-dir {params.out} > {log} 2>&1"


rule fig2_files:
    input:
        FLOPS.format(name="fig2"),
        FLOPS.format(name="fig2-diffit"),
    output:
        figure_files("fig2"),
    params:
        out=lambda wc, output: os.path.splitext(output[0])[0],
    log:
        f"{LOGS}/report/fig2.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report figure fig2 --flops {input} --out {params.out} > {log} 2>&1"


rule fig8_files:
    output:
        figure_files("fig8"),
    params:
        out=lambda wc, output: os.path.splitext(output[0])[0],
        gamma=5.0,  # paper Figure 8: min-SNR vs soft-min-SNR at gamma = 5
    log:
        f"{LOGS}/report/fig8.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report figure fig8 --gamma {params.gamma} --out {params.out} > {log} 2>&1"


rule fig9_files:
    input:
        fig9_metrics(),
    output:
        figure_files("fig9"),
    params:
        out=lambda wc, output: os.path.splitext(output[0])[0],
    log:
        f"{LOGS}/report/fig9.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report figure fig9 --metrics {input} --out {params.out} > {log} 2>&1"


rule scaling_files:
    input:
        bench=BENCH_JSON,
        flops_csv=f"{FIGURES}/fig2.csv",
    output:
        figure_files("scaling"),
    params:
        out=lambda wc, output: os.path.splitext(output[0])[0],
    log:
        f"{LOGS}/report/scaling.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report figure scaling --bench {input.bench} --flops-csv {input.flops_csv} --out {params.out} > {log} 2>&1"
