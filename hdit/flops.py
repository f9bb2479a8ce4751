"""`hdit flops`: GFLOPs (1 FLOP = 1 multiply-accumulate, forward, batch 1) and trainable parameters of a
paper-scale backbone, counted by fvcore on meta tensors (nothing is computed). Table 1, Table 6, Figure 2.

Convention (docs/METHOD.md §1): every Linear as tokens x in x out (bias ignored, the
per-sample conditioning linears included); attention QK^T and AV: global 2*N^2*d, neighborhood 2*N*d*k^2,
shifted window 2*N*d*w^2. Norms, softmax, activations, elementwise ops and embedding lookups are not
counted: fvcore's default handles are cleared and only the matmul-like ones are registered again
(`set_op_handle(name, None)` does not remove a default handle in fvcore 0.1.5, so layer_norm would
still be counted).

Resolution adaptation (Sec. 4.1, 5.2): hourglass models get one new outer level per doubling
(`ModelConfig.at_resolution`); single-level models (DiT-B/4 and the isotropic R3/R4) just see more tokens,
which is what Table 1's R1-R4 columns report.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing as mp
import re
import sys
import time

import torch

from hdit.configs import REGISTRY, TABLE1_ROWS, ConfigError, ModelConfig, check_resolution, get_config

DEFAULT_RESOLUTIONS = (128, 256, 512)
FORMATS = ("md", "json", "csv")
# An op whose name matches this must never go uncounted.
_MATMUL_LIKE = re.compile(r"matmul|linear|mm|conv|attention|einsum|natten|na2d|flex", re.IGNORECASE)


def model_at_resolution(cfg: ModelConfig, resolution: int) -> ModelConfig:
    """The backbone the paper counts at `resolution`."""
    check_resolution(resolution)
    return cfg.at_resolution(resolution)


# --- fvcore handles --------------------------------------------------------------------------

def _shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def sdpa_flop(inputs, outputs) -> int:
    """aten::scaled_dot_product_attention, q [..., L, E], k [..., S, E], v [..., S, Ev]: QK^T + AV MACs."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def neighborhood_flop(inputs, outputs) -> int:
    """hdit::neighborhood_attention, q [B, H, W, heads, d], kernel k: N * k^2 * (d + dv) per head."""
    q, v = _shape(inputs[0]), _shape(inputs[2])
    k = inputs[3].toIValue()
    return math.prod(q[:-1]) * k * k * (q[-1] + v[-1])


def _analysis(model, inputs):
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn import jit_handles as h

    fca = FlopCountAnalysis(model, inputs).clear_op_handles()
    fca.set_op_handle(**{
        "aten::linear": h.linear_flop_jit, "aten::matmul": h.matmul_flop_jit, "aten::mm": h.matmul_flop_jit,
        "aten::bmm": h.bmm_flop_jit, "aten::addmm": h.addmm_flop_jit, "aten::einsum": h.einsum_flop_jit,
        "aten::_convolution": h.conv_flop_jit,
        "aten::scaled_dot_product_attention": sdpa_flop, "hdit::neighborhood_attention": neighborhood_flop})
    return fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")


class _Call(torch.nn.Module):
    """Wraps forward(x, noise_cond, class_labels) so that jit tracing sees tensors only."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, noise_cond, *labels):
        return self.model(x, noise_cond, *labels)


_CACHE: dict[ModelConfig, dict] = {}  # many rows share a backbone (C/D/E, R3/R4, ...)


def _trace_count(cfg: ModelConfig) -> dict:
    from hdit.model import build_model

    with torch.device("meta"):
        model = build_model(cfg).eval()
        x = torch.zeros(1, cfg.in_channels, cfg.resolution, cfg.resolution)
        inputs = (x, torch.zeros(1)) + ((torch.zeros(1, dtype=torch.long),) if cfg.num_classes else ())
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fca = _analysis(_Call(model), inputs)
    total = fca.total()
    unsupported = dict(sorted(fca.unsupported_ops().items()))
    bad = [op for op in unsupported if _MATMUL_LIKE.search(op.split("::")[-1])]
    if bad:
        raise RuntimeError(f"fvcore left matmul-like ops uncounted: {bad}; register handles for them")
    return {"gflops": total / 1e9, "params": params, "unsupported_ops": unsupported}


def count_model(cfg: ModelConfig) -> dict:
    """{"gflops", "params", "unsupported_ops"} of a backbone; built and traced on the meta device."""
    if cfg not in _CACHE:
        _CACHE[cfg] = _trace_count(cfg)
    return _CACHE[cfg]


def count(config_id: str, resolution: int) -> dict:
    """GFLOPs/params of paper row `config_id` (paper scale, never a profile) at `resolution`."""
    cfg = model_at_resolution(get_config(config_id).model, resolution)
    return {"config": config_id, "resolution": resolution, **count_model(cfg)}


def _worker_init():
    torch.set_num_threads(1)


def count_table(config_ids, resolutions, progress: bool = True, workers: int = 2) -> list[dict]:
    """All cells; distinct backbones are traced once each, in `workers` forked processes (tracing is
    single-threaded Python; the whole table takes about half as long on 2 cores)."""
    from tqdm import tqdm

    cells = [(c, r, model_at_resolution(get_config(c).model, r)) for c in config_ids for r in resolutions]
    todo = sorted({cfg for *_, cfg in cells if cfg not in _CACHE}, key=lambda m: -m.resolution)  # big ones first
    bar = tqdm(total=len(todo), desc="flops (backbones)", disable=not progress, file=sys.stderr)
    if workers > 1 and len(todo) > 1 and "fork" in mp.get_all_start_methods():
        with mp.get_context("fork").Pool(min(workers, len(todo)), initializer=_worker_init) as pool:
            for cfg, result in zip(todo, pool.imap(_trace_count, todo)):
                _CACHE[cfg] = result
                bar.update()
    for cfg in todo:  # serial path (workers=1, or no fork on this platform)
        if cfg not in _CACHE:
            count_model(cfg)
            bar.update()
    bar.close()
    return [{"config": c, "resolution": r, **count_model(cfg)} for c, r, cfg in cells]


# --- output ----------------------------------------------------------------------------------

def to_json(rows) -> str:
    return json.dumps(rows, indent=2) + "\n"


def to_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["config", "resolution", "gflops", "params"])
    for r in rows:
        w.writerow([r["config"], r["resolution"], f"{r['gflops']:.4f}", r["params"]])
    return buf.getvalue()


def to_markdown(rows) -> str:
    """One row per config: GFLOPs (GMAC) and parameters (M) at each resolution."""
    res = sorted({r["resolution"] for r in rows})
    by = {(r["config"], r["resolution"]): r for r in rows}
    configs = list(dict.fromkeys(r["config"] for r in rows))
    head = ["config", "title"] + [f"GFLOPs@{x}" for x in res] + [f"params@{x} (M)" for x in res]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        cells = [c, REGISTRY[c].title] + [f"{by[c, x]['gflops']:.2f}" for x in res]
        cells += [f"{by[c, x]['params'] / 1e6:.2f}" for x in res]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(1 FLOP = 1 multiply-accumulate, forward pass, batch 1; fvcore on meta tensors.)\n"


FORMATTERS = {"md": to_markdown, "json": to_json, "csv": to_csv}


# --- CLI -------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", default=list(TABLE1_ROWS), metavar="ID",
                   help=f"config IDs, or 'all' (default: the Table 1 rows). Valid: {', '.join(REGISTRY)}")
    p.add_argument("--resolutions", nargs="+", type=int, default=list(DEFAULT_RESOLUTIONS), metavar="R",
                   help="powers of two >= 128 (default: 128 256 512)")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--out", default=None, help="write here (atomically) instead of stdout")
    p.add_argument("--workers", type=int, default=2, help="processes tracing backbones in parallel (default 2)")


def main(args) -> int:
    configs = list(REGISTRY) if args.configs == ["all"] else args.configs
    try:
        for c in configs:
            get_config(c)
        for r in args.resolutions:
            check_resolution(r)
    except ConfigError as e:
        print(f"hdit flops: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = count_table(configs, args.resolutions, workers=args.workers)
    text = FORMATTERS[args.format](rows)
    if args.out:
        from hdit.io import write_text

        write_text(args.out, text)
        print(f"wrote {args.out} ({len(rows)} cells in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
