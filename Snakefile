# Reproduce HDiT (Crowson et al., ICML 2024): Tables 1-5 and Figures 2, 8, 9.
#
#   snakemake --cores all table1                  # embedded default profile, offline CPU (~15 min)
#   snakemake --report results/report.html        # Snakemake's report of what has been built
#   snakemake --cores all figures
#   snakemake --configfile workflows/config/paper.yaml --workflow-profile workflows/profiles/paper all
#
#   snakemake --cores all table_diffit            # DiffiT beside HDiT E and DiT-B/4 (not part of `all`)
#
# Targets: flops, table1 .. table5, figures, all; only when named: table_diffit, bench, bench_cpu_quick, scaling.
# See README.md ("The workflow").
import os

configfile: os.path.join(workflow.basedir, "workflows", "config", "default.yaml")


report: "workflows/report/workflow.rst"


include: "workflows/rules/common.smk"
include: "workflows/rules/data.smk"
include: "workflows/rules/train.smk"
include: "workflows/rules/sample.smk"
include: "workflows/rules/evaluate.smk"
include: "workflows/rules/flops.smk"
include: "workflows/rules/report.smk"
include: "workflows/rules/bench.smk"


localrules:
    all,
    flops,
    table1,
    table2,
    table3,
    table4,
    table5,
    figures,
    scaling,
    annotate_metrics,
    table_diffit,
    table_diffit_files,
    fig2_files,
    fig8_files,
    fig9_files,
    scaling_files,


rule flops:  # Table 1's GFLOP columns and Figure 2's curves (the DiffiT table's counts come with table_diffit)
    input:
        expand(FLOPS, name=[name for name in FLOP_SETS if not name.startswith("table_diffit")]),


rule table1:
    input:
        table_files(1),


rule table2:
    input:
        table_files(2),


rule table3:
    input:
        table_files(3),


rule table4:
    input:
        table_files(4),


rule table5:
    input:
        table_files(5),


# Image-space DiffiT beside HDiT step E and DiT-B/4 (R2), same trainer and budget (docs/DIFFIT.md). Not in
# `all`: it extends the paper rather than reproducing it (and trains one more run).
rule table_diffit:
    input:
        table_files("_diffit"),


rule figures:
    input:
        figure_files("fig2"),
        figure_files("fig8"),
        figure_files("fig9"),


rule scaling:  # measured throughput vs FLOPs, from the benchmark JSON in results/bench (only when asked)
    input:
        figure_files("scaling"),


rule all:
    default_target: True
    input:
        rules.flops.input,
        rules.table1.input,
        rules.table2.input,
        rules.table3.input,
        rules.table4.input,
        rules.table5.input,
        rules.figures.input,
