"""HDiT and DiT-B/4: parameter counts, zero-init identities, RoPE, and CPU training of the tiny profile models."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hdit.configs import TABLE1_ROWS, get_config
from hdit.model import build_model
from hdit.model.hourglass import HDiT, TransformerLayer
from hdit.model.layers import AxialRoPE, apply_rope, pixel_centres
from hdit.profiles import resolve
from hdit.reference import paper_values


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def meta_model(config_id, resolution=None):
    cfg = get_config(config_id).model
    cfg = cfg.at_resolution(resolution) if resolution else cfg
    with torch.device("meta"):
        return build_model(cfg)


def tiny(config_id="E", **changes):
    torch.manual_seed(0)
    return build_model(replace(resolve(config_id, "default").model, **changes))


def randomize_zero_inits(model):
    """Give the zero-initialised projections weights so that the output depends on the inputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


# --- parameter counts ------------------------------------------------------------------------

def test_ablation_e_has_exactly_117003805_params():
    assert n_params(meta_model("E")) == 117_003_805 == paper_values()["params_closed_form"]["E"]


def test_resolution_adaptation_params_of_e():
    # one new 384-wide, depth-2 outer level per doubling (docs/METHOD.md §1): 117.00M / 128.21M / 139.42M
    assert [round(n_params(meta_model("E", r)) / 1e4) for r in (256, 512)] == [12821, 13942]


@pytest.mark.parametrize("config_id", ["ffhq-1024", "imagenet-256"])
def test_table6_params_closed_form(config_id):
    ours = n_params(meta_model(config_id))
    closed = paper_values()["params_closed_form"][config_id]
    paper = paper_values()["table6"][config_id]["params"]
    print(f"{config_id}: measured {ours / 1e6:.2f}M, closed form {closed / 1e6:.1f}M, paper {paper / 1e6:.0f}M")
    assert abs(ours - closed) < 0.1e6


def test_dit_b4_learned_sigma_trainable_params():
    model = meta_model("R1")
    assert round(n_params(model) / 1e4) == 13039  # 130.39M
    assert not any(p is model.pos_embed for p in model.parameters())  # fixed sin-cos buffer
    assert model.final_layer.linear.out_features == 4 * 4 * 6  # learn_sigma doubles the channels


# --- zero init and structure -----------------------------------------------------------------

def test_hdit_layer_is_identity_at_init():
    cfg = resolve("E", "default").model
    layer = TransformerLayer(cfg, level=0, index=0)
    x = torch.randn(2, 8, 8, cfg.widths[0])
    rope = AxialRoPE(cfg.head_dim, cfg.heads[0])(pixel_centres(8, 8))
    cond = torch.randn(2, cfg.mapping_width)
    torch.testing.assert_close(layer(x, rope, cond), x, rtol=0, atol=0)


@pytest.mark.parametrize("config_id", ["E", "R1"])
def test_whole_model_output_is_zero_at_init(config_id):
    model = tiny(config_id)
    x = torch.randn(2, 3, 32, 32)
    out = model(x, torch.randn(2), torch.tensor([1, 3]))
    assert out.shape == (2, model.cfg.out_channels, 32, 32) and (out == 0).all()


def test_null_class_is_default_and_labels_matter():
    model = randomize_zero_inits(tiny("E"))
    x, c = torch.randn(2, 3, 32, 32), torch.randn(2)
    null = torch.full([2], model.cfg.num_classes)
    torch.testing.assert_close(model(x, c), model(x, c, null))
    assert not torch.allclose(model(x, c, torch.tensor([0, 1])), model(x, c, null))


def test_dit_patch_embed_equals_conv_and_loads_conv_weights():
    model = tiny("R2")
    conv = torch.nn.Conv2d(3, model.cfg.widths[0], 2, stride=2)
    sd = {"proj.weight": conv.weight.detach(), "proj.bias": conv.bias.detach()}
    model.x_embedder.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.x_embedder(x), conv(x).flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_param_groups_cover_every_parameter_once():
    model = tiny("E")
    groups = model.param_groups(lr=3e-3, weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    ada = id(model.mid[0].attn.norm.linear.weight)
    assert lr_of[ada] == pytest.approx(1e-3) and lr_of[id(model.mapping.in_norm.scale)] == pytest.approx(1e-3)
    assert lr_of[id(model.mid[0].attn.qkv.weight)] == 3e-3 and wd_of[id(model.mid[0].attn.qkv.weight)] == 0.01
    assert wd_of[id(model.mid[0].attn.scale)] == 0.0 and wd_of[id(model.out_norm.scale)] == 0.0
    assert sum(len(g["params"]) for g in tiny("R2").param_groups(1e-4, 0.0)) == len(list(tiny("R2").parameters()))


def test_param_groups_of_paper_e_as_the_authors():
    """Paper-size E: which parameters are decayed and which run at lr/3, with counts from the architecture
    (widths 384/768, depths 2/11, GEGLU 3x, mapping 1 x 768 with d_ff 2304, 1000 classes, patch 4)."""
    with torch.device("meta"):
        model = build_model(get_config("E").model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {(g["lr"], g["weight_decay"]): g["params"] for g in model.param_groups(lr=3e-4, weight_decay=0.01)}
    lr, slow = 3e-4, 3e-4 / 3
    assert sorted(groups) == sorted([(lr, 0.0), (lr, 0.01), (slow, 0.0), (slow, 0.01)])

    def size(key):
        return sum(p.numel() for p in groups[key])

    w0, w1, mw, layers0, layers1 = 384, 768, 768, 4, 11  # level 0: 2 down + 2 up layers
    heads = layers0 * w0 // 64 + layers1 * w1 // 64
    # full lr, no decay: the mapping network's two input projections (authors: created without weight
    # decay), the class embedding (+ null class), attention scales, the lerp factor, the output norm
    no_decay = {names[id(p)] for p in groups[(lr, 0.0)]}
    assert {"time_in.weight", "aug_in.weight", "class_emb.weight", "skips.0.fac", "out_norm.scale"} <= no_decay
    assert size((lr, 0.0)) == 2 * mw * mw + 1001 * mw + heads + 1 + w0
    # full lr, decayed: every other Linear weight (qkv, out, GEGLU up/down = 13 w^2 per layer, patch/merge/split)
    assert all(names[id(p)].endswith("weight") for p in groups[(lr, 0.01)])
    assert size((lr, 0.01)) == 13 * (layers0 * w0 ** 2 + layers1 * w1 ** 2) + 2 * 48 * w0 + 2 * 4 * w0 * w1
    # lr/3, no decay: the mapping network's RMSNorm scales
    assert {names[id(p)] for p in groups[(slow, 0.0)]} == {"mapping.in_norm.scale", "mapping.blocks.0.norm.scale",
                                                             "mapping.out_norm.scale"}
    # lr/3, decayed: AdaRMSNorm linears (2 per layer) and the mapping GEGLU
    assert size((slow, 0.01)) == 2 * mw * (layers0 * w0 + layers1 * w1) + mw * 2 * 3 * mw + 3 * mw * mw
    assert [len(groups[k]) for k in sorted(groups)] == [3, 32, 20, 64]
    assert sum(size(k) for k in groups) == 117_003_805


def test_variants_are_parameters():
    e = tiny("E", dropout=(0.1, 0.0))
    assert e.down[0][0].attn.dropout.p == 0.1 and e.mid[0].ff.dropout.p == 0.0
    assert tiny("skip-concat").skips[0].proj.in_features == 2 * resolve("E", "default").model.widths[0]
    assert float(e.skips[0].fac.detach()) == 0.5  # learnable lerp initialised at 0.5
    a = tiny("A")
    assert a.pos_emb is not None and a.ropes is None and a.mid[0].ff.down.in_features == 4 * a.cfg.widths[-1]
    assert e.pos_emb is None and e.ropes is not None and e.mid[0].ff.down.in_features == 3 * e.cfg.widths[-1]
    b1 = tiny("B1", depths=(2, 1))
    assert [layer.attn.shift for layer in b1.down[0]] == [0, 4]  # shift w/2 on odd layers of each stack
    assert tiny("ffhq-1024").class_emb is None


# --- RoPE ------------------------------------------------------------------------------------

def test_rope_logits_depend_only_on_relative_position():
    torch.manual_seed(0)
    heads, d = 3, 64
    rope = AxialRoPE(d, heads)
    assert rope.freqs.shape == (heads, 8)  # 8 frequencies per axis for head_dim 64
    q, k = torch.randn(1, heads, d), torch.randn(1, heads, d)

    def logits(pq, pk):
        cq, sq = rope(torch.tensor(pq))
        ck, sk = rope(torch.tensor(pk))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum(-1)

    base = logits([0.1, -0.3], [0.5, 0.2])
    torch.testing.assert_close(logits([0.1 + 0.37, -0.3 - 0.81], [0.5 + 0.37, 0.2 - 0.81]), base)
    assert not torch.allclose(logits([0.1, -0.3], [0.9, 0.2]), base)
    # the second half of each head is not rotated
    c, s = rope(torch.tensor([0.3, 0.7]))
    torch.testing.assert_close(apply_rope(q, c, s)[..., 32:], q[..., 32:])
    assert not torch.allclose(apply_rope(q, c, s)[..., :32], q[..., :32])
    assert pixel_centres(4, 4)[:, 0, 0].tolist() == [-0.75, -0.25, 0.25, 0.75]


# --- the tiny profile-scaled models train on CPU --------------------------------------------

@pytest.mark.parametrize("config_id", TABLE1_ROWS + ("skip-concat", "ffhq-1024", "imagenet-256"))
def test_profile_models_forward_backward_cpu(config_id):
    cfg = resolve(config_id, "default").model
    model = randomize_zero_inits(build_model(cfg))
    x = torch.randn(2, 3, cfg.resolution, cfg.resolution)
    labels = torch.tensor([0, cfg.num_classes]) if cfg.num_classes else None
    out = model(x, torch.randn(2), labels)
    assert out.shape == (2, cfg.out_channels, cfg.resolution, cfg.resolution)
    F.mse_loss(out, torch.randn_like(out)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.patch_in.proj.weight.grad.abs().sum() > 0 if isinstance(model, HDiT) else True
