"""`hdit report`: render tables, figures and annotated metrics from the workflow's files.

  hdit report table 1 --profile default --metrics R1=PATH ... --flops FLOPS.json --out-dir results/tables
  hdit report table 3 --profile default --metrics small=PATH full=PATH --out-dir results/tables
  hdit report table diffit --profile default --metrics E=PATH R2=PATH diffit-imagenet128=PATH \
      --flops PAPER.json TRAINED.json --out-dir results/tables
  hdit report figure fig2 --flops FLOPS.json [DIFFIT.json] --out results/figures/fig2
  hdit report figure fig8 --out results/figures/fig8
  hdit report figure fig9 --metrics PATH ... --out results/figures/fig9
  hdit report figure scaling --bench B.json ... [--flops-csv F.csv] --out results/figures/scaling
  hdit report metrics --fid RAW.json --samples DIR --run RUNDIR --profile default --out FILE
  hdit report refstats --ref DIR --mode clean --out FILE   # cache a reference set's FID statistics once
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hdit.configs import ConfigError

TABLES = ("1", "2", "3", "4", "5", "diffit")
FIGURES = ("fig2", "fig8", "fig9", "scaling")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("table", help="render results/tables/table{N}.{md,tex,csv}")
    t.add_argument("number", choices=TABLES)
    t.add_argument("--profile", required=True)
    t.add_argument("--metrics", nargs="+", required=True, metavar="KEY=PATH",
                   help="annotated metrics JSON per row (Table 3: small=, full=; Table 4: one PATH)")
    t.add_argument("--flops", type=Path, nargs="+", default=[],
                   help="FLOP counter JSON (Table 1; table diffit: the paper-scale and the as-trained counts)")
    t.add_argument("--out-dir", type=Path, default=Path("results/tables"))
    f = sub.add_parser("figure", help="render results/figures/{fig2,fig8,fig9}.{png,pdf,csv}")
    f.add_argument("name", choices=FIGURES)
    f.add_argument("--flops", type=Path, nargs="+", default=[], help="FLOP counter JSON, one or more (fig2)")
    f.add_argument("--metrics", nargs="+", type=Path, default=[], help="annotated metrics JSON per CFG scale (fig9)")
    f.add_argument("--gamma", type=float, default=5.0, help="fig8: min-SNR gamma (paper: 5)")
    f.add_argument("--bench", nargs="+", type=Path, default=[], help="bench JSON files (scaling)")
    f.add_argument("--flops-csv", type=Path, help="scaling: GFLOP CSV (e.g. results/figures/fig2.csv)")
    f.add_argument("--out", type=Path, required=True, help="output prefix, e.g. results/figures/fig2")
    m = sub.add_parser("metrics", help="add provenance to an `hdit fid` JSON")
    m.add_argument("--fid", type=Path, required=True)
    m.add_argument("--samples", type=Path, required=True)
    m.add_argument("--run", type=Path, required=True)
    m.add_argument("--profile", required=True)
    m.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("refstats", help="compute and cache the FID reference statistics of a reference set once "
                                        "(before parallel `hdit fid` jobs would each compute them)")
    r.add_argument("--ref", type=Path, required=True)
    r.add_argument("--mode", required=True, help="clean-fid mode (clean | legacy_tensorflow)")
    r.add_argument("--device", default=None)
    r.add_argument("--out", type=Path, required=True, help="JSON record of the cached statistics")


def load_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"input file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None


def parse_pairs(items: list[str]) -> dict[str, Path]:
    pairs = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise ValueError(f"--metrics {item!r}: expected KEY=PATH")
        pairs[key] = Path(path)
    return pairs


def _table(args) -> list[Path]:
    from hdit.report import render, tables

    if args.number == "4":
        if len(args.metrics) != 1:
            raise ValueError(f"table 4 takes one --metrics PATH, got {args.metrics}")
        metrics = load_json(Path(args.metrics[0].partition("=")[2] or args.metrics[0]))
        return render.write(tables.table4(metrics, args.profile), args.out_dir)
    metrics = {k: load_json(p) for k, p in parse_pairs(args.metrics).items()}
    if args.number in ("1", "diffit"):
        if not args.flops:
            raise ValueError(f"table {args.number} needs --flops FILE ... (the FLOP counter's JSON)")
        flops = [row for p in args.flops for row in load_json(p)]
        table = (tables.table1 if args.number == "1" else tables.table_diffit)(metrics, flops, args.profile)
    else:
        table = {"2": tables.table2, "3": tables.table3, "5": tables.table5}[args.number](metrics, args.profile)
    return render.write(table, args.out_dir)


def _figure(args) -> list[Path]:
    from hdit.report import figures
    from hdit.reference import paper_values

    if args.name == "fig2":
        if not args.flops:
            raise ValueError("fig2 needs --flops FILE ...")
        return figures.fig2([row for p in args.flops for row in load_json(p)], args.out)
    if args.name == "fig8":
        return figures.fig8(args.out, gamma=args.gamma)
    if args.name == "fig9":
        if not args.metrics:
            raise ValueError("fig9 needs --metrics PATH ... (one per CFG scale)")
        return figures.fig9([load_json(p) for p in args.metrics], args.out, paper_values()["figure9"]["best"])
    from hdit.report.scaling import render_scaling  # written by the benchmark engineer

    if not args.bench:
        raise ValueError("scaling needs --bench FILE ... (results/bench/*.json)")
    return render_scaling(args.bench, args.flops_csv, args.out)


def _metrics(args) -> list[Path]:
    from hdit import io
    from hdit.report.annotate import annotate

    io.write_json(args.out, annotate(load_json(args.fid), args.samples, args.run, args.profile))
    return [args.out]


def _refstats(args) -> list[Path]:
    from hdit import io
    from hdit.metrics import load_inception, reference_stats
    from hdit.metrics.features import default_device

    device = str(args.device or default_device())
    stats = reference_stats(args.ref, load_inception(device), args.mode, device=device)
    record = {k: stats[k] for k in ("key", "path", "n", "resolution", "content_sha256", "cached")}
    io.write_json(args.out, {**record, "ref_dir": str(args.ref), "mode": args.mode})
    return [args.out]


def main(args: argparse.Namespace) -> int:
    from hdit.metrics import ExtractorError, MetricsError

    try:
        paths = {"table": _table, "figure": _figure, "metrics": _metrics, "refstats": _refstats}[args.what](args)
    except (ValueError, KeyError, ConfigError, MetricsError, ExtractorError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"hdit report: error: {msg}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
