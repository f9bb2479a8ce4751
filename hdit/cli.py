"""`hdit` command line: thin wrappers. Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `main(args) -> int`; the logic stays in the library. Bad input and damaged,
occupied or misplaced files (`hdit.errors.HarnessError`) end any subcommand with its message and exit code 2,
without a traceback; so does a failed write (no space, file too large, not a directory: `hdit.io.WriteError`, or
an OSError of those causes raised elsewhere)."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "flops": ("hdit.flops", "count GFLOPs (MACs) and parameters with fvcore (Table 1 / Table 6 / Figure 2)"),
    "train": ("hdit.train", "train a config (paper row) under a profile; resumable"),
    "sample": ("hdit.sample", "draw samples from a trained run into .npz shards; resumable"),
    "fid": ("hdit.metrics", "FID / KID / IS with clean-fid and an offline Inception network"),
    "classify": ("hdit.metrics.classify", "class accuracy of conditional samples on the embedded shapes data "
                 "(a small CNN trained once, cached)"),
    "refstats": ("hdit.metrics.reference", "FID reference statistics of a training split (ADM protocol); resumable"),
    "data": ("hdit.data.cli", "prepare a training split once (ADM crop); export images as .npz shards; synth folders"),
    "report": ("hdit.report.cli", "render tables and figures into results/"),
    "bench": ("hdit.bench", "GPU/CPU throughput, latency and memory benchmarks"),
    "bench-loader": ("hdit.data.loaderbench", "training-input img/s per core: raw image folders vs prepared splits"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hdit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if name in sys.argv[1:2]:  # import only the module that is being run (torch imports are slow)
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.argv[1:] = argv
    args = build_parser().parse_args(argv)
    from hdit.errors import HarnessError, error_text
    from hdit.io import CAUSES, write_error

    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except HarnessError as e:
        print(f"hdit {args.command}: error: {error_text(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that failed outside `hdit.io` (a log, a library's own file): name file and cause
        if e.errno not in CAUSES:
            raise
        print(f"hdit {args.command}: error: {write_error(e.filename or 'a file', e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
