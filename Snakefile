# Reproduce HDiT (Crowson et al., ICML 2024): Tables 1-5 and Figures 2, 8, 9.
#
#   snakemake --cores all table1                  # embedded default profile, offline CPU (~15 min)
#   snakemake --cores all figures
#   snakemake --configfile workflows/config/paper.yaml --workflow-profile workflows/profiles/paper all
#
#   snakemake --cores all table_diffit            # DiffiT beside HDiT E and DiT-B/4 (not part of `all`)
#
# Targets: flops, table1 .. table5, table_diffit, figures, all. See README.md ("The workflow").
import os

configfile: os.path.join(workflow.basedir, "workflows", "config", "default.yaml")


include: "workflows/rules/common.smk"
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
    annotate_metrics,
    table1_files,
    table2_files,
    table3_files,
    table4_files,
    table5_files,
    table_diffit,
    table_diffit_files,
    fig2_files,
    fig8_files,
    fig9_files,
    scaling_files,


rule flops:
    input:
        expand(FLOPS, name=FLOP_SETS),


rule table1:
    input:
        table_files(1),
        classacc_files(TABLE1_ROWS),  # default profile: class accuracy of every conditional shapes run


rule table2:
    input:
        table_files(2),
        classacc_files(TABLE2_ROWS),  # default profile: class accuracy of every conditional shapes run


rule table3:
    input:
        table_files(3),


rule table4:
    input:
        table_files(4),
        classacc_files([IMAGENET256]),


rule table5:
    input:
        table_files(5),
        classacc_files(TABLE5_ROWS),  # default profile: class accuracy of every conditional shapes run


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
        figure_files("scaling") if HAVE_SCALING else [],


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
