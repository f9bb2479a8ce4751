"""`hdit fid`: FID / KID / IS of a sample directory; prints one JSON object (or a line of text)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hdit.errors import error_text
from hdit.io import WriteError, check_writable, write_json
from hdit.metrics.compute import DEFAULT_MODE, compute_metrics
from hdit.metrics.images import MetricsError
from hdit.metrics.inception import MODES, ExtractorError
from hdit.metrics.refstats import DEFAULT_CACHE_DIR


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=Path, required=True, help="sample directory (shard-*.npz) or image folder")
    p.add_argument("--ref", type=Path, help="reference: a statistics file from `hdit refstats` (a training split, "
                   "ADM protocol) or a directory of reference images (.npz shards or image files) for FID/KID")
    p.add_argument("--n", type=_positive, help="expected number of samples (label FID-<n>); must match the directory")
    p.add_argument("--first", type=_positive, help="score only the first N samples of the directory (FID-N of "
                   "a larger set, e.g. FID-5k beside FID-50k)")
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help=f"clean-fid resize mode (default {DEFAULT_MODE}, as the ADM evaluator)")
    p.add_argument("--is", dest="inception_score", action="store_const", const=True, default=False,
                   help="also compute the Inception Score (error if the Inception file has no classifier head)")
    p.add_argument("--is-if-available", dest="inception_score", action="store_const", const="if-available",
                   help="compute the Inception Score where the Inception file has its classifier head; otherwise "
                        "record it as unavailable with the reason (the offline default)")
    p.add_argument("--device", help="feature device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--workers", type=int, help="data-loader workers for decoding/resizing")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="reference statistics cache")
    p.add_argument("--kid-subsets", type=_positive, default=100)
    p.add_argument("--kid-subset-size", type=_positive, default=1000)
    p.add_argument("--is-splits", type=_positive, default=10)
    p.add_argument("--fid-resamples", type=_positive, default=200,
                   help="bootstrap resamples of the sample features for FID's 95%% interval")
    p.add_argument("--seed", type=int, default=0, help="seed of the KID subsets and the FID bootstrap")
    p.add_argument("--format", choices=("json", "text"), default="text")
    p.add_argument("--out", type=Path, help="also write the JSON object here (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _text(r: dict) -> str:
    parts = [f"{r['label']} ({r['mode']})"]
    if "fid" in r:
        (flo, fhi), (klo, khi) = r["fid_ci95"], r["kid_ci95"]
        parts += [f"fid={r['fid']:.4f} [{flo:.4f}, {fhi:.4f}]", f"kid={r['kid']:.6f} [{klo:.6f}, {khi:.6f}]"]
    if r.get("is_mean") is not None:
        parts.append(f"is={r['is_mean']:.3f}+-{r['is_std']:.3f}")
    return " ".join(parts + [f"extractor={r['extractor_sha256'][:12]}"])


def main(args: argparse.Namespace) -> int:
    try:
        if args.out is not None:
            check_writable(args.out)  # before the work, not after it
        result = compute_metrics(args.samples, args.ref, n=args.n, first=args.first, mode=args.mode,
                                 inception_score=args.inception_score, device=args.device,
                                 cache_dir=args.cache_dir, batch_size=args.batch_size, workers=args.workers,
                                 kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                                 is_splits=args.is_splits, seed=args.seed, fid_resamples=args.fid_resamples,
                                 verbose=not args.quiet)
    except (MetricsError, ExtractorError, WriteError) as e:
        print(f"hdit fid: error: {error_text(e)}", file=sys.stderr)
        return 2
    try:
        if args.out:
            write_json(args.out, result)
    except WriteError as e:  # the finished scores are not lost: the whole JSON object goes to stdout
        print(json.dumps(result, indent=2, default=str))
        print(f"hdit fid: error: {e}. The result is printed above (stdout) as JSON: save it from there",
              file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.format == "json" else _text(result))
    return 0
