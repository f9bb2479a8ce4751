# Tables 1-5 (results/tables), their sample grids and training curves, Figures 2, 8, 9 (results/figures): measured
# beside the paper's values. One set of rules per table, made from its spec (hdit.report.specs): the metrics JSON
# of each row, the FLOP counts it reads, the sample sets of its grid and the training logs of its curves.
# Every CLI is given its output files explicitly (`--out {output}`). Outputs marked with `reported` appear in
# `snakemake --report results/report.html` with a caption from workflows/report/ that carries the scale label.


for _spec in TABLE_SPECS.values():
    _scored = _spec.scored(PROFILE)
    _name, _label = _spec.name, f"Table {_spec.number}"

    rule:
        name:
            f"{_name}_files"
        localrule: True
        input:
            unpack(table_inputs(_spec)),
        output:
            md=f"{TABLES}/{_name}.md",
            tex=f"{TABLES}/{_name}.tex",
            csv=f"{TABLES}/{_name}.csv",
            html=reported(f"{TABLES}/{_name}.html", "table.rst", _label),
        params:
            number=_spec.number,
            title=_spec.title,
            scale=table_scale(PROFILE, _spec.number),
            profile=P,
            metrics=pairs({k: scored_metrics(s) for k, s in _scored.items()}),
            flops=("--flops " + " ".join(map(shlex.quote, (FLOPS.format(name=f) for f in _spec.flops))))
            if _spec.flops else "",
            class_acc=pairs({k: scored_classacc(s) for k, s in _scored.items()
                             if has_class_accuracy(s.config, PROFILE)}),
        log:
            f"{LOGS}/report/{_name}.log",
        conda:
            "../envs/hdit.yaml"
        shell:
            "hdit report table {params.number} --profile {params.profile} --metrics {params.metrics} {params.flops} "
            "--class-acc {params.class_acc} --out {output:q} > {log:q} 2>&1"

    rule:
        name:
            f"{_name}_grid"
        localrule: True
        input:
            samples=[os.path.join(scored_samples(s), "meta.json") for s in _scored.values()],
            dataset=dataset_of(_spec),
        output:
            png=reported(f"{FIGURES}/grid-{_name}.png", "grid.rst", _label),
            csv=f"{FIGURES}/grid-{_name}.csv",
        params:
            number=_spec.number,
            scale=table_scale(PROFILE, _spec.number),
            profile=P,
            samples=pairs({k: scored_samples(s) for k, s in _scored.items()}),
            data=data_option_of(_spec),
        log:
            f"{LOGS}/report/grid-{_name}.log",
        conda:
            "../envs/hdit.yaml"
        shell:
            "hdit report grid {params.number} --profile {params.profile} --samples {params.samples} {params.data} "
            "--out {output:q} > {log:q} 2>&1"

    rule:
        name:
            f"{_name}_curves"
        localrule: True
        input:
            sorted({run_file(s.config, "done.json") for s in _scored.values()}),
        output:
            png=reported(f"{FIGURES}/curves-{_name}.png", "curves.rst", _label),
            csv=f"{FIGURES}/curves-{_name}.csv",
        params:
            number=_spec.number,
            scale=table_scale(PROFILE, _spec.number),
            profile=P,
            # log.csv is written beside done.json (undeclared: a failed job must not delete it, see train.smk)
            logs=pairs({s.config: run_file(s.config, "log.csv") for s in _scored.values()}),
        log:
            f"{LOGS}/report/curves-{_name}.log",
        conda:
            "../envs/hdit.yaml"
        shell:
            "hdit report curves {params.number} --profile {params.profile} --logs {params.logs} --out {output:q} "
            "> {log:q} 2>&1"


rule fig2_files:
    input:
        FLOPS.format(name="fig2"),
        FLOPS.format(name="fig2-diffit"),
    output:
        png=reported(f"{FIGURES}/fig2.png", "fig2.rst", "Figures"),
        pdf=f"{FIGURES}/fig2.pdf",
        csv=f"{FIGURES}/fig2.csv",
    log:
        f"{LOGS}/report/fig2.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report figure fig2 --flops {input:q} --out {output:q} > {log:q} 2>&1"


rule fig8_files:
    output:
        png=reported(f"{FIGURES}/fig8.png", "fig8.rst", "Figures"),
        pdf=f"{FIGURES}/fig8.pdf",
        csv=f"{FIGURES}/fig8.csv",
    params:
        gamma=5.0,  # paper Figure 8: min-SNR vs soft-min-SNR at gamma = 5
    log:
        f"{LOGS}/report/fig8.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report figure fig8 --gamma {params.gamma} --out {output:q} > {log:q} 2>&1"


rule fig9_files:
    input:
        fig9_metrics(),
    output:
        png=reported(f"{FIGURES}/fig9.png", "fig9.rst", "Figures"),
        pdf=f"{FIGURES}/fig9.pdf",
        csv=f"{FIGURES}/fig9.csv",
    params:
        scale=table_scale(PROFILE, "4"),
    log:
        f"{LOGS}/report/fig9.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report figure fig9 --metrics {input:q} --out {output:q} > {log:q} 2>&1"


rule scaling_files:
    input:
        bench=bench_jsons,
        flops_csv=f"{FIGURES}/fig2.csv",
    output:
        png=reported(f"{FIGURES}/scaling.png", "scaling.rst", "Figures"),
        pdf=f"{FIGURES}/scaling.pdf",
        csv=f"{FIGURES}/scaling.csv",
    log:
        f"{LOGS}/report/scaling.log",
    conda:
        "../envs/hdit.yaml"
    shell:
        "hdit report figure scaling --bench {input.bench:q} --flops-csv {input.flops_csv:q} --out {output:q} "
        "> {log:q} 2>&1"
