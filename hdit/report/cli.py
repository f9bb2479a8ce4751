"""`hdit report`: render tables, figures, sample grids, training curves and annotated metrics from the
workflow's files. Every output is named explicitly; its suffix picks the format.

  hdit report table 1 --profile default --metrics R1=PATH ... --flops FLOPS.json [--class-acc R1=PATH ...] \
      --out results/tables/table1.md results/tables/table1.tex results/tables/table1.csv results/tables/table1.html
  hdit report table 3 --profile default --metrics small=PATH full=PATH --out t3.md t3.csv
  hdit report grid 1 --profile default --samples R1=SAMPLE_DIR ... [--data PATH] --out grid-table1.png grid-table1.csv
  hdit report curves 1 --profile default --logs R1=RUN_DIR/log.csv ... --out curves-table1.png curves-table1.csv
  hdit report table diffit --profile default --metrics E=PATH R2=PATH diffit-imagenet128=PATH \
      --flops PAPER.json TRAINED.json --out t.md t.csv
  hdit report figure fig2 --flops FLOPS.json [DIFFIT.json] --out results/figures/fig2.png results/figures/fig2.csv
  hdit report figure fig8 --out results/figures/fig8        # a prefix: fig8.png, fig8.pdf, fig8.csv
  hdit report figure fig9 --metrics PATH ... --out results/figures/fig9.png
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
    t = sub.add_parser("table", help="render a table (.md, .tex, .html, .csv)")
    t.add_argument("number", choices=TABLES)
    t.add_argument("--profile", required=True)
    t.add_argument("--metrics", nargs="+", required=True, metavar="KEY=PATH",
                   help="annotated metrics JSON per row (keys: hdit.report.specs; Table 4 also takes one PATH)")
    t.add_argument("--flops", type=Path, nargs="+", default=[],
                   help="FLOP counter JSON (Table 1; table diffit: the paper-scale and the as-trained counts)")
    t.add_argument("--class-acc", nargs="*", default=[], metavar="KEY=PATH",
                   help="class-accuracy JSON per row (`hdit classify`); a file that does not exist leaves it blank")
    t.add_argument("--out", nargs="+", type=Path, required=True, help="output files (.md, .tex, .html, .csv)")
    for name, what, pairs in (("grid", "sample grid: reference images, then each row's samples", "--samples"),
                              ("curves", "training curves: smoothed loss and img/s against step", "--logs")):
        g = sub.add_parser(name, help=f"{what} of a table's runs (.png, .pdf, .csv)")
        g.add_argument("number", choices=TABLES)
        g.add_argument("--profile", required=True)
        g.add_argument(pairs, nargs="+", required=True, metavar="KEY=PATH",
                       help="sample directory per row" if name == "grid" else "log.csv of each row's training run")
        g.add_argument("--out", nargs="+", type=Path, required=True, help="output files (.png, .pdf, .csv)")
    grid, curves = sub.choices["grid"], sub.choices["curves"]
    grid.add_argument("--data", help="dataset folder of the reference row (ImageNet/FFHQ; none for shapes)")
    grid.add_argument("--per-class", type=int, default=2, help="images per class label in every row")
    grid.add_argument("--classes", type=int, default=10, help="class labels shown (the first that every set has)")
    curves.add_argument("--smooth", type=int, default=5, help="EMA span of the loss, in log rows")
    f = sub.add_parser("figure", help="render results/figures/{fig2,fig8,fig9,scaling}.{png,pdf,csv}")
    f.add_argument("name", choices=FIGURES)
    f.add_argument("--flops", type=Path, nargs="+", default=[], help="FLOP counter JSON, one or more (fig2)")
    f.add_argument("--metrics", nargs="+", type=Path, default=[], help="annotated metrics JSON per CFG scale (fig9)")
    f.add_argument("--gamma", type=float, default=5.0, help="fig8: min-SNR gamma (paper: 5)")
    f.add_argument("--bench", nargs="+", type=Path, default=[], help="bench JSON files (scaling)")
    f.add_argument("--flops-csv", type=Path, help="scaling: GFLOP CSV (e.g. results/figures/fig2.csv)")
    f.add_argument("--out", nargs="+", type=Path, required=True,
                   help="output files (.png, .pdf, .csv), or one prefix for all three")
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


def parse_pairs(items: list[str], option: str = "--metrics") -> dict[str, Path]:
    pairs = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise ValueError(f"{option} {item!r}: expected KEY=PATH")
        pairs[key] = Path(path)
    return pairs


def _figure_out(out: list[Path]):
    """One path without a figure suffix is a prefix (PREFIX.png, .pdf, .csv); otherwise the files themselves."""
    from hdit.report.figures import FIGURE_SUFFIXES

    return out[0] if len(out) == 1 and out[0].suffix not in FIGURE_SUFFIXES else list(out)


def _class_acc(items: list[str]) -> dict[str, dict]:
    """The class-accuracy JSON of each key that has one (blank where the file does not exist)."""
    found = {}
    for key, path in parse_pairs(items, "--class-acc").items():
        if path.is_file():
            found[key] = load_json(path)
        else:
            print(f"hdit report: class accuracy of {key}: {path} does not exist; left blank", file=sys.stderr)
    return found


def _table(args) -> list[Path]:
    from hdit.report import render, tables
    from hdit.report.specs import table_spec

    spec = table_spec(args.number)
    if len(args.metrics) == 1 and "=" not in args.metrics[0] and len(spec.scored(args.profile)) == 1:
        args.metrics = [f"{next(iter(spec.scored(args.profile)))}={args.metrics[0]}"]  # Table 4: one PATH
    metrics = {k: load_json(p) for k, p in parse_pairs(args.metrics).items()}
    flops = [row for p in args.flops for row in load_json(p)] if args.flops else None
    table = tables.build(args.number, metrics, args.profile, flops, _class_acc(args.class_acc))
    return render.write_files(table, args.out)


def _grid(args) -> list[Path]:
    from hdit.data import build_dataset
    from hdit.data.shapes import class_name
    from hdit.profiles import get_profile, resolve
    from hdit.report.grids import render_grid
    from hdit.report.tables import table_scale

    samples = parse_pairs(args.samples, "--samples")
    get_profile(args.profile)
    data = {resolve(s.config, args.profile).data for s in _scored(args).values()}
    if len(data) != 1:
        raise ValueError(f"table {args.number}: rows on {len(data)} datasets; a grid shows one reference set")
    data = data.pop()
    dataset = build_dataset(data, args.data, split="train")
    names = class_name if data.name == "shapes" else (lambda c: f"class {c}")
    title = (f"Table {args.number}, samples: reference ({data.name} {data.resolution}px training split) first, "
             f"then each row, same class labels in the same order. {table_scale(args.profile, args.number)}")
    return render_grid(samples, dataset, _figure_out(args.out), title, args.per_class, args.classes, names)


def _scored(args):
    from hdit.report.specs import table_spec

    return table_spec(args.number).scored(args.profile)


def _curves(args) -> list[Path]:
    from hdit.report.curves import render_curves
    from hdit.report.tables import table_scale

    title = f"Table {args.number}, training curves. {table_scale(args.profile, args.number)}"
    return render_curves(parse_pairs(args.logs, "--logs"), _figure_out(args.out), title, args.smooth)


def _figure(args) -> list[Path]:
    from hdit.report import figures
    from hdit.reference import paper_values

    out = _figure_out(args.out)
    if args.name == "fig2":
        if not args.flops:
            raise ValueError("fig2 needs --flops FILE ...")
        return figures.fig2([row for p in args.flops for row in load_json(p)], out)
    if args.name == "fig8":
        return figures.fig8(out, gamma=args.gamma)
    if args.name == "fig9":
        if not args.metrics:
            raise ValueError("fig9 needs --metrics PATH ... (one per CFG scale)")
        return figures.fig9([load_json(p) for p in args.metrics], out, paper_values()["figure9"]["best"])
    from hdit.report.scaling import render_scaling  # written by the benchmark engineer

    if not args.bench:
        raise ValueError("scaling needs --bench FILE ... (results/bench/*.json)")
    return render_scaling(args.bench, args.flops_csv, out)


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


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors reported as a message (HarnessError, ConfigError and MetricsError are ValueErrors). Inception's
    ExtractorError is looked up only if a subcommand imported it: importing hdit.metrics costs a torch import,
    which the record-only subcommands (`metrics`, `table`) do without."""
    inception = sys.modules.get("hdit.metrics.inception")
    return (ValueError, KeyError, ConfigError) + ((inception.ExtractorError,) if inception else ())


def main(args: argparse.Namespace) -> int:
    try:
        run = {"table": _table, "grid": _grid, "curves": _curves, "figure": _figure, "metrics": _metrics,
               "refstats": _refstats}[args.what]
        paths = run(args)
    except _user_errors() as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"hdit report: error: {msg}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
