"""The GPU code path on a CPU: the compiled training step (inductor's C++ backend) against eager, the number of
compilations, bf16 autocast (precision "bf16-all") against fp32, compiled FlexAttention neighborhood attention,
and `hdit train --compile` end to end. Tiny widths keep the compilations to seconds (issue 26).

Tolerances (measured on torch 2.14.1, one thread; the observed gaps in brackets):
- compiled vs eager, fp32, 3 AdamW steps: losses rel. 1e-4 [0: equal as floats], weights max |diff| 1e-4 [9e-7 E,
  7e-7 DiT] -- inductor reorders reductions, nothing more; AdamW at lr 3e-3 moves weights by ~9e-3 over the 3
  steps, so 1e-4 still catches a compiled step that trains something else.
- bf16-all vs fp32, same batch and draws: losses rel. 1e-3 [1.1e-5: the zero-initialised output layers keep the
  network's share of the first losses small], every loss finite; the trained model's output, relative norm of
  the difference 3e-2 [4e-3, bf16's 8-bit mantissa].
- compiled FlexAttention (CPU, forward) vs the masked backend: 1e-4 [0].
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from hdit.backbones import build_model
from hdit.profiles import resolve
from hdit.sample import sample_run
from hdit.step import TrainStep, autocast_args, make_optimizer
from hdit.train import _wrap, train

CPU = torch.device("cpu")
STEPS = 3
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-4
BF16_LOSS_RTOL, BF16_OUT_RTOL = 1e-3, 3e-2


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    torch.set_num_threads(1)
    # inductor's C++ builds in this process: a pool of compile workers would import torch once each, which on a
    # 2-core CI machine costs more than it saves
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def tiny(config_id: str, precision: str = "fp32", batch: int = 4):
    """The default-profile row at 16 px, one block per level, batch 4, no lr warm-up (so 3 steps move the weights):
    E keeps neighborhood attention (8x8 tokens, kernel 7) outside and global attention inside; R2 is DiT under EDM."""
    run = resolve(config_id, "default")
    m = replace(run.model, resolution=16, depths=tuple(1 for _ in run.model.depths), mapping_width=32)
    return replace(run, model=m, data=replace(run.data, resolution=16),
                   train=replace(run.train, batch_size=batch, precision=precision, lr_warmup_steps=0))


def batch_of(run, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = run.model
    x = torch.rand(run.train.batch_size, m.in_channels, m.resolution, m.resolution, generator=g) * 2 - 1
    return x, torch.randint(0, m.num_classes, (run.train.batch_size,), generator=g)


def trainer(run, raw, compile_: bool) -> TrainStep:
    amp = autocast_args(CPU, run.train.precision)
    net = _wrap(raw, run, CPU, 1, compile_, amp)
    ema = copy.deepcopy(raw).eval().requires_grad_(False)
    return TrainStep(run, raw, net, ema, make_optimizer(raw, run), amp)


def train_steps(run, raw, compile_: bool, steps: int = STEPS, graphs: list | None = None):
    """Losses of `steps` training steps on one fixed batch; `graphs` gets the dynamo graph count after each."""
    step = trainer(run, raw, compile_)
    x, labels = batch_of(run)
    raw.train()
    losses = []
    for i in range(steps):
        losses.append(float(step(x, labels, i)))
        if graphs is not None:
            graphs.append(counters["stats"]["unique_graphs"])
    return losses


@pytest.mark.parametrize("config_id", ["E", "R2"])
def test_compiled_step_matches_eager_and_compiles_once(config_id):
    """The trainer's step through `_wrap(compile=True)` (inductor): same losses and weights as eager within the
    module's tolerances, and the graphs are all compiled in the first step (no recompilation per step)."""
    run = tiny(config_id)
    torch.manual_seed(0)
    eager = build_model(run.model, attn_backend="masked")
    compiled = copy.deepcopy(eager)
    ref = train_steps(run, eager, False)
    assert counters["stats"]["unique_graphs"] == 0
    graphs: list[int] = []
    got = train_steps(run, compiled, True, graphs=graphs)
    assert graphs[0] >= 1, "nothing was compiled"
    assert graphs == [graphs[0]] * STEPS, f"graphs compiled after each step: {graphs} (recompilation)"
    assert not counters["recompiles"], dict(counters["recompiles"])
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=LOSS_RTOL, atol=0)
    for (name, a), b in zip(compiled.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=WEIGHT_ATOL, msg=lambda m: f"{name}: {m}")
    moved = max((a - b).abs().max().item() for a, b in zip(eager.parameters(), build_model_like(run)))
    assert moved > 50 * WEIGHT_ATOL  # the weights moved (~lr per step): the tolerance is far below the signal


def build_model_like(run):
    torch.manual_seed(0)
    return build_model(run.model, attn_backend="masked").parameters()


def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32():
    """precision "bf16-all" turns autocast on for a CPU ("bf16" keeps Table 6's CUDA-only meaning). Trained in bf16,
    the losses are finite and within BF16_LOSS_RTOL of fp32's for the same weights, batch and draws; the trained
    model's bf16 output is bf16 and within BF16_OUT_RTOL (relative norm) of its fp32 output, and not equal to it."""
    assert autocast_args(CPU, "bf16")["enabled"] is False and autocast_args(CPU, "fp32")["enabled"] is False
    assert autocast_args(CPU, "bf16-all") == dict(device_type="cpu", dtype=torch.bfloat16, enabled=True)
    assert autocast_args(torch.device("cuda"), "bf16")["enabled"] is True
    losses = {}
    for precision in ("fp32", "bf16-all"):
        run = tiny("E", precision)
        torch.manual_seed(0)
        raw = build_model(run.model, attn_backend="masked")
        losses[precision] = train_steps(run, raw, False)
    assert all(torch.isfinite(torch.tensor(losses["bf16-all"])))
    torch.testing.assert_close(torch.tensor(losses["bf16-all"]), torch.tensor(losses["fp32"]), rtol=BF16_LOSS_RTOL,
                               atol=0)
    x, labels = batch_of(run, seed=2)
    with torch.no_grad():
        ref = raw.eval()(x, torch.zeros(len(x)), labels)
        with torch.autocast(**autocast_args(CPU, "bf16-all")):
            out = raw(x, torch.zeros(len(x)), labels)
    assert ref.dtype == torch.float32 and out.dtype == torch.bfloat16
    assert 0 < ((out.float() - ref).norm() / ref.norm()).item() < BF16_OUT_RTOL


def test_unknown_precision_is_a_config_error():
    from hdit.configs import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="precision='fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="'fp16'"):
        autocast_args(CPU, "fp16")


def test_cli_refuses_an_unknown_precision(tmp_path, capsys):
    from hdit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "E", "--out", str(tmp_path / "r"), "--precision", "fp16"])
    assert e.value.code == 2 and "'bf16', 'bf16-all', 'fp32'" in capsys.readouterr().err


def test_precision_is_part_of_the_run_identity():
    run = tiny("E")
    assert replace(run, train=replace(run.train, precision="bf16-all")).training_key() != run.training_key()


def test_flex_neighborhood_attention_compiles_on_cpu_forward_only():
    """FlexAttention neighborhood attention compiled by inductor on a CPU (its C++ flex template): the whole tiny
    HDiT in eval mode equals the masked backend. torch 2.14.1 has no CPU FlexAttention backward, eager or
    compiled: `flex_attention` refuses inputs that require grad while dynamo traces it."""
    from torch.nn.attention.flex_attention import flex_attention

    from hdit.model.flex import neighborhood_block_mask

    run = tiny("E")
    torch.manual_seed(0)
    masked = build_model(run.model, attn_backend="masked").eval()
    flex = build_model(run.model, attn_backend="flex").eval()
    flex.load_state_dict(masked.state_dict())
    x, labels = batch_of(run)
    c = torch.zeros(len(x))
    with torch.no_grad():
        ref = masked(x, c, labels)
        flex(x, c, labels)  # block masks built outside the graph
        got = torch.compile(flex, dynamic=False)(x, c, labels)
    assert counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)

    q = torch.randn(1, 2, 64, 16, requires_grad=True)
    bm = neighborhood_block_mask(8, 8, 7, CPU)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        torch.compile(flex_attention, dynamic=False)(q, q, q, block_mask=bm)


def test_train_compile_end_to_end(tmp_path):
    """`hdit.train.train(..., compile=True, precision=...)`, the code behind `hdit train --compile --precision`: the
    trainer's whole loop (data, checkpoints, log) runs compiled; config.json records the compile, the precision
    that ran and the overridden TrainConfig.precision, which is part of the training key. (Table 6's "bf16" run
    overridden to "fp32": on a CPU both run fp32, so the graphs are those of the test above, from inductor's
    cache.) Then `hdit sample --compile` from that run."""
    run = tiny("E", "bf16")
    out = tmp_path / "run"
    done = train(run, out, "default", steps=2, device="cpu", compile=True, precision="fp32", progress=False,
                 log_every=1)
    record = json.loads((out / "config.json").read_text())
    assert record["compile"] is True and record["precision"] == "fp32"
    assert record["config"]["train"]["precision"] == "fp32"
    assert done["step"] == 2 and done["training_key"] == record["training_key"] != run.training_key()
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(float(r.split(",")[1]) > 0 for r in rows)
    # `hdit sample --compile` from that run: the compiled sampler (the divergence hook traced into its graph)
    # draws what the eager one draws, to a uint8 level; meta.json records both choices
    shards = {}
    for compile_ in (False, True):
        meta = sample_run(out, tmp_path / f"samples-{compile_}", n=2, steps=2, batch_size=2, device="cpu",
                          progress=False, compile=compile_)
        assert (meta["compile"], meta["precision"]) == (compile_, "fp32")
        shards[compile_] = np.load(tmp_path / f"samples-{compile_}" / "shard-00000.npz")["images"].astype(int)
    assert np.abs(shards[True] - shards[False]).max() <= 1
