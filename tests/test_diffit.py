"""Image-space DiffiT (baselines/diffit.py): pinned parameter counts and GFLOPs of the registry configs, both
checked against closed forms of the appendix's architecture; window TMSA = globally masked attention;
relative position bias depends only on offsets; output shapes; EDM preconditioning through the harness's
trainer and sampler; profile resolution; Figure 2's third curve and the DiffiT table."""
import json
import re
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from baselines.diffit import DiffiT, WindowTMSA, relative_position_index
from hdit import flops
from hdit.cli import main as cli
from hdit.configs import TABLE_DIFFIT_ROWS, ConfigError, get_config
from hdit.diffusion import Denoiser
from hdit.backbones import build_model
from hdit.profiles import get_profile, resolve
from hdit.report import figures, render, tables
from hdit.report.runs import training_run

pytestmark = pytest.mark.usefixtures("one_thread")

DIFFIT_IDS = ("diffit-ffhq64", "diffit-ffhq64-1222", "diffit-cifar10", "diffit-cifar10-222", "diffit-imagenet128")
PARAMS = {"diffit-ffhq64": 44_853_987, "diffit-ffhq64-1222": 23_853_615, "diffit-cifar10": 28_747_203,
          "diffit-cifar10-222": 15_935_395, "diffit-imagenet128": 45_366_499}
# diffit-ffhq64 (the default FFHQ-64 layout), GMAC at 64/128/256/512 px: fixed windows -> exactly 4x per doubling
GFLOPS_FFHQ64 = {64: 32.212647936, 128: 128.821100544, 256: 515.254910976, 512: 2060.990152704}


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def meta(cfg):
    with torch.device("meta"):
        return build_model(cfg)


def levels(cfg, resolution):
    """(grid, in-channels of each block, width, depth) per encoder level, then per decoder level."""
    w, d = cfg.widths, cfg.depths
    enc = [(resolution >> i, [w[max(i - 1, 0)]] + [w[i]] * (d[i] - 1), w[i]) for i in range(len(w))]
    dec = [(resolution >> i, [w[i + 1] + w[i]] + [w[i]] * (d[i] - 1), w[i]) for i in range(len(w) - 1)]
    return enc + dec


def closed_form_params(cfg) -> int:
    t, win = cfg.mapping_width, cfg.window_size
    total = 256 * t + t + t * t + t + (cfg.num_classes + 1) * t * bool(cfg.num_classes)  # x_t embedders
    total += 9 * 3 * cfg.widths[0] + cfg.widths[0] + 2 * cfg.widths[0] + 9 * cfg.widths[0] * 3 + 3  # tokenizer, head
    total += sum(9 * c * c + c for c in cfg.widths[:-1] + cfg.widths[1:])  # stride-2 convs, upsampling convs
    for _, ins, c in levels(cfg, cfg.resolution):
        for cin in ins:
            total += 2 * cin + 9 * cin * c + c + (cin * c + c) * (cin != c)  # GN, 3x3 conv, 1x1 residual
            total += 3 * c * c + 3 * c + 3 * c * t + 3 * c + c * c + c  # W_s, W_t (qkv), out projection
            total += (2 * win - 1) ** 2 * (c // cfg.head_dim) + 8 * c * c + 5 * c  # bias table, MLP 4x
    return total


def closed_form_gmac(cfg, resolution) -> float:
    """REFERENCE.md's convention: convs out x in x k^2, Linears tokens x in x out, window attention 2 N d w^2."""
    t, w0 = cfg.mapping_width, cfg.widths[0]
    total = 256 * t + t * t + 2 * resolution ** 2 * 3 * w0 * 9  # time embedder; tokenizer and head
    w = cfg.widths
    total += sum((resolution >> i) ** 2 * 9 * w[i - 1] ** 2 for i in range(1, len(w)))  # stride-2 convs
    total += sum((resolution >> i) ** 2 * 9 * w[i + 1] ** 2 for i in range(len(w) - 1))  # upsampling convs
    for g, ins, c in levels(cfg, resolution):
        n, win = g * g, min(cfg.window_size, g)
        for cin in ins:
            total += n * 9 * cin * c + n * cin * c * (cin != c) + 3 * c * t  # conv, residual, W_t x_t
            total += n * 12 * c * c + 2 * n * win * win * c  # qkv, proj, MLP; QK^T and AV
    return total / 1e9


# ----------------------------------------------------------------------------- parameters and GFLOPs

@pytest.mark.parametrize("config_id", DIFFIT_IDS)
def test_parameter_counts_are_pinned_and_match_the_closed_form(config_id):
    cfg = get_config(config_id).model
    assert n_params(meta(cfg)) == PARAMS[config_id] == closed_form_params(cfg)


def test_variants_are_parameters_of_one_model_class():
    models = [meta(get_config(c).model) for c in DIFFIT_IDS]
    assert {type(m) for m in models} == {DiffiT}
    ffhq, ffhq_1222 = get_config("diffit-ffhq64").model, get_config("diffit-ffhq64-1222").model
    assert ffhq.depths == (4, 4, 4, 4) and ffhq_1222 == replace(ffhq, depths=(1, 2, 2, 2))
    cifar = get_config("diffit-cifar10").model
    assert cifar.widths == (128, 256, 256) and cifar.window_size == 4 and ffhq.window_size == 8
    assert get_config("diffit-cifar10-222").model == replace(cifar, depths=(2, 2, 2))


@pytest.mark.slow  # four traces of the 45M-parameter model: ~30-60 s on 2 cores
def test_gflops_at_64_128_256_512_are_pinned():
    cfg = get_config("diffit-ffhq64").model
    rows = flops.count_table(["diffit-ffhq64"], list(GFLOPS_FFHQ64), progress=False)
    for r in rows:
        assert r["gflops"] == pytest.approx(GFLOPS_FFHQ64[r["resolution"]], abs=1e-6)
        assert r["gflops"] == pytest.approx(closed_form_gmac(cfg, r["resolution"]), abs=1e-9)
        assert r["params"] == PARAMS["diffit-ffhq64"] and r["profile"] == "paper"
        assert "hdit::conv2d" not in r["unsupported_ops"]
    slopes = [tables.gflops_slope(GFLOPS_FFHQ64[a], GFLOPS_FFHQ64[b], a, b) for a, b in ((64, 128), (256, 512))]
    assert slopes == pytest.approx([1.0, 1.0], abs=1e-3)  # convolutions + fixed windows: O(n)


def test_window_attention_flops_follow_the_convention():
    """fvcore's count of the default-profile model equals the closed form (32 px, windows clamp to 4x4)."""
    cfg = resolve("diffit-imagenet128", "default").model
    assert flops.count_model(cfg)["gflops"] == pytest.approx(closed_form_gmac(cfg, 32), abs=1e-12)


def test_flops_cli_accepts_64_for_diffit_and_names_the_config_it_rejects(capsys):
    assert cli(["flops", "--configs", "diffit-cifar10-222", "--resolutions", "32", "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["params"] == PARAMS["diffit-cifar10-222"] and row["gflops"] > 0
    assert cli(["flops", "--configs", "diffit-ffhq64", "E", "--resolutions", "64"]) == 2
    assert "config E: resolution 64 is not supported" in capsys.readouterr().err
    assert cli(["flops", "--configs", "diffit-ffhq64", "--resolutions", "48"]) == 2
    assert "resolution 48 is not supported; expected a power of two >= 8" in capsys.readouterr().err


# ----------------------------------------------------------------------------- attention properties

def tmsa(width=16, heads=2, window=4, time_width=8):
    torch.manual_seed(0)
    attn = WindowTMSA(width, heads, window, time_width)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()  # a bias large enough to matter
    return attn


def global_reference(attn, x, x_t, win):
    """Softmax(QK^T / sqrt(d) + B) V over ALL tokens, with keys outside the query's window masked out."""
    b, h, w, c = x.shape
    qkv = (attn.qkv(x) + attn.qkv_time(x_t)[:, None, None]).reshape(b, h * w, 3, attn.heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    same = ((yy[:, None] // win) == (yy[None] // win)) & ((xx[:, None] // win) == (xx[None] // win))
    offset = ((yy[:, None] - yy[None]) + attn.window - 1) * (2 * attn.window - 1) + (xx[:, None] - xx[None]) + attn.window - 1
    bias = attn.relative_position_bias_table[offset.clamp(0, (2 * attn.window - 1) ** 2 - 1)].permute(2, 0, 1)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    out = logits.masked_fill(~same, float("-inf")).softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


@pytest.mark.parametrize("grid, win", [(8, 4), (12, 4), (2, 2)])  # 2x2 grid: the window shrinks to the grid
def test_window_tmsa_equals_masked_global_attention(grid, win):
    attn = tmsa()
    x, x_t = torch.randn(2, grid, grid, 16), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, x_t), global_reference(attn, x, x_t, win), atol=1e-5, rtol=1e-5)


def test_time_token_enters_queries_keys_and_values():
    attn = tmsa()
    x = torch.randn(1, 4, 4, 16)
    with torch.no_grad():
        a, b = attn(x, torch.zeros(1, 8)), attn(x, torch.ones(1, 8))
        attn.qkv_time.weight.zero_()
        attn.qkv_time.bias.zero_()
        c, d = attn(x, torch.zeros(1, 8)), attn(x, torch.ones(1, 8))
    assert not torch.allclose(a, b) and torch.equal(c, d)


@pytest.mark.parametrize("win", [4, 2, 1])
def test_relative_bias_depends_only_on_the_offset(win):
    attn = tmsa(window=4)
    bias = attn.bias(win).detach()  # [heads, win^2, win^2]
    pos = [(i, j) for i in range(win) for j in range(win)]
    by_offset = {}
    for p, (pi, pj) in enumerate(pos):
        for q, (qi, qj) in enumerate(pos):
            by_offset.setdefault((pi - qi, pj - qj), []).append(bias[:, p, q])
    for values in by_offset.values():  # translation invariance: one value per offset and head
        assert all(torch.equal(v, values[0]) for v in values)
    assert len(by_offset) == (2 * win - 1) ** 2
    idx = relative_position_index(4)  # every offset of a full window has its own table row
    assert idx.unique().numel() == 49 and idx.diagonal().unique().tolist() == [24]


# ----------------------------------------------------------------------------- the model

def tiny_cfg(**changes):
    return replace(resolve("diffit-imagenet128", "default").model, **changes)


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_output_shape_at_several_resolutions(resolution):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(widths=(32, 64, 64, 64), depths=(1, 1, 1, 1)))
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        y = model(x, torch.randn(2), torch.tensor([3, 10]))
    assert y.shape == x.shape and torch.equal(y, torch.zeros_like(y))  # zero-initialised head


def test_output_depends_on_noise_level_and_class():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(depths=(1, 1, 1, 1)))
    with torch.no_grad():
        torch.nn.init.normal_(model.head[-1].weight, std=0.1)
        x = torch.randn(1, 3, 32, 32)
        outs = [model(x, torch.tensor([s]), torch.tensor([c])) for s, c in ((0.0, 1), (1.0, 1), (0.0, 2))]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


@pytest.mark.parametrize("change, message", [
    (dict(skip="add"), "skip='add'"),
    (dict(window_size=6), "window_size=6"),
    (dict(patch_size=2), "patch_size=2"),
    (dict(attention=("global",) * 4), "attention="),
    (dict(resolution=36), "resolution=36"),
])
def test_bad_configs_are_refused_naming_the_value(change, message):
    with pytest.raises(ConfigError, match=message):
        DiffiT(tiny_cfg(**change))


def test_default_profile_keeps_pixel_tokens_and_gives_ten_classes():
    run = resolve("diffit-imagenet128", "default")
    m = run.model
    assert (m.family, m.patch_size, m.resolution, m.num_classes) == ("diffit", 1, 32, 10)
    assert m.widths == (32,) * 4 and m.depths == (2,) * 4 and run.data.name == "shapes"
    assert run.train == resolve("E", "default").train  # same recipe as E: only the backbone differs
    assert resolve("diffit-ffhq64", "default").model.num_classes == 0  # the paper's models stay unconditional
    assert training_run("diffit-imagenet128", "default") == "diffit-imagenet128"
    assert "32px" in get_profile("default").scale_label(get_config("diffit-imagenet128"))


def test_edm_preconditioning_trains_and_samples_through_the_harness(tmp_path):
    from hdit.sample import sample_run
    from hdit.train import train

    run = resolve("diffit-imagenet128", "default")
    run = replace(run, model=replace(run.model, depths=(1, 1, 1, 1)), train=replace(run.train, batch_size=4))
    denoiser = Denoiser.for_run(run, build_model(run.model))
    assert denoiser.noise_cond == "c_noise"  # EDM's c_noise = log(sigma) / 4, not DiT's timestep map
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.5, 20.0])
    with torch.no_grad():  # zero head: D(x) = c_skip x exactly
        torch.testing.assert_close(denoiser(x, sigma), x * (0.25 / (sigma ** 2 + 0.25))[:, None, None, None])
    done = train(run, tmp_path / "run", steps=2, checkpoint_every=2, progress=False, device="cpu")
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert done["step"] == 2 and record["objective"] == "edm (c_noise)"
    meta = sample_run(tmp_path / "run", tmp_path / "samples", n=3, steps=2, progress=False)
    images = np.load(tmp_path / "samples" / "shard-00000.npz")["images"]
    assert images.shape == (3, 32, 32, 3) and meta["sampler"] == "dpmpp-3m-sde"


# ----------------------------------------------------------------------------- Figure 2 and the table

def test_fig2_has_a_third_curve_with_its_slope(tmp_path):
    rows = [{"config": c, "resolution": r, "gflops": g, "params": 1} for c, pts in
            {"E": {128: 31.37, 256: 64.72, 512: 198.1}, "R1": {128: 106.4, 256: 657.6, 512: 6340.6},
             "diffit-ffhq64": GFLOPS_FFHQ64}.items() for r, g in pts.items()]
    rows.append({"config": "diffit-ffhq64", "resolution": 32, "gflops": 99.0, "params": 1, "profile": "default"})
    df = figures.fig2_frame(rows)
    slope = df.groupby("config").complexity_slope.first()
    assert slope["diffit-ffhq64"] == pytest.approx(1.0, abs=1e-4) and slope["R1"] == pytest.approx(1.635, abs=1e-3)
    assert df[df.config == "diffit-ffhq64"].resolution.tolist() == [64, 128, 256, 512]  # profile rows dropped
    assert set(df.complexity) == {"O(n)", "O(n^2)"}
    paths = figures.fig2(rows, tmp_path / "fig2")
    assert all(p.stat().st_size > 0 for p in paths)
    assert "DiffiT" in pd.read_csv(paths[2]).model.str.cat()


def fake_table_inputs():
    metrics, counted = {}, []
    for i, row in enumerate(TABLE_DIFFIT_ROWS):
        metrics[row] = {"config": training_run(row, "default"), "fid": 100.0 + i, "n": 200, "fid_mode": "clean",
                        "train": {"steps": 200, "batch_size": 32, "params": 1000 + i, "wall_time_s": 60.0 + i,
                                  "device": "cpu"}}
        counted += [{"config": row, "resolution": 128, "profile": "paper", "gflops": 30.0 + i, "params": 10 + i},
                    {"config": row, "resolution": 32, "profile": "default", "gflops": 0.1 + i, "params": 1000 + i}]
    return metrics, counted


def test_diffit_table_columns_scale_and_compute(tmp_path):
    metrics, counted = fake_table_inputs()
    t = tables.table_diffit(metrics, counted, "default")
    df = t.df.set_index("row")
    assert list(df.index) == list(TABLE_DIFFIT_ROWS)
    assert df.backbone.tolist() == ["HDiT", "DiT-B/4", "DiffiT (image space)"]
    assert df.loc["diffit-imagenet128", "gflops_trained"] == pytest.approx(2.1)
    assert df.loc["diffit-imagenet128", "train_tmac"] == pytest.approx(3 * 2.1 * 200 * 32 / 1e3)
    assert df.loc["E", "gflops_128"] == 30.0 and math.isnan(df.loc["diffit-imagenet128", "paper_fid"])
    assert df.scale.str.startswith("default: shapes 32px").all()
    assert any("E, skip-lerp, softminsnr-g4" in n for n in t.notes) and "reduced scale" in t.caption
    render.write(t, tmp_path)
    md = (tmp_path / "table_diffit.md").read_text()
    assert md.startswith("**Table diffit.**")
    assert re.search(r"\| diffit-imagenet128 +\| DiffiT \(image space\) +\| +102\.00 \| +– \|", md)
    with pytest.raises(ValueError, match="FLOP count of E at 32 px under profile 'default'"):
        tables.table_diffit(metrics, [c for c in counted if c["profile"] == "paper"], "default")
    # class accuracy beside FID, as in the other default-profile tables (the workflow scores every row's samples)
    acc = {r: {"accuracy": a, "accuracy_ci95": [a - 0.05, a + 0.05], "n": 200, "chance": 0.1}
           for r, a in zip(TABLE_DIFFIT_ROWS, (0.26, 0.14, 0.27))}
    t = tables.build("diffit", metrics, "default", counted, acc)
    assert t.df.set_index("row").class_acc.to_dict() == dict(zip(TABLE_DIFFIT_ROWS, (0.26, 0.14, 0.27)))
    assert any(n.startswith("Class acc.: the fraction") for n in t.notes)
    render.write(t, tmp_path)
    assert re.search(r"\| +0\.27 \[0\.22, 0\.32\] +\|", (tmp_path / "table_diffit.md").read_text())


def test_report_cli_renders_the_diffit_table(tmp_path, capsys):
    metrics, counted = fake_table_inputs()
    pairs = []
    for row, m in metrics.items():
        (tmp_path / f"{row}.json").write_text(json.dumps(m))
        pairs.append(f"{row}={tmp_path / f'{row}.json'}")
    (tmp_path / "flops.json").write_text(json.dumps(counted))
    argv = ["report", "table", "diffit", "--profile", "default", "--metrics", *pairs,
            "--out", str(tmp_path / "table_diffit.md"), str(tmp_path / "table_diffit.csv")]
    assert cli(argv) == 2 and "needs --flops" in capsys.readouterr().err
    assert cli(argv + ["--flops", str(tmp_path / "flops.json")]) == 0
    assert pd.read_csv(tmp_path / "table_diffit.csv").shape[0] == 3
