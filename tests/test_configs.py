"""The registry is keyed by the paper's row names and each ablation step changes only what the
paper says it changes (Sec. 5.2)."""
import dataclasses

import pytest

from hdit.configs import (REGISTRY, TABLE1_ROWS, TABLE2_ROWS, TABLE5_ROWS, ConfigError,
                          RunConfig, get_config)
from hdit.profiles import PROFILES, get_profile, resolve

PAPER_IDS = ["R1", "R2", "R3", "R4", "A", "B1", "B2", "C", "D", "E", "skip-concat", "skip-add", "skip-lerp",
             "snr", "minsnr-g5", "minsnr-g4", "softminsnr-g4", "ffhq-1024", "imagenet-256"]
DIFFIT_IDS = ["diffit-ffhq64", "diffit-ffhq64-1222", "diffit-cifar10", "diffit-cifar10-222", "diffit-imagenet128"]


def test_registry_has_every_paper_row():
    assert list(REGISTRY) == PAPER_IDS + DIFFIT_IDS  # the paper's rows, then the DiffiT backbone (tests/test_diffit.py)
    assert set(TABLE1_ROWS) | set(TABLE2_ROWS) | set(TABLE5_ROWS) <= set(REGISTRY)


def _diff(a, b):
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return {k for k in da if da[k] != db[k]}


@pytest.mark.parametrize("child,parent,changed", [
    ("B1", "A", {"attention", "outer_attention"}),
    ("B2", "A", {"attention", "outer_attention"}),
    ("C", "B2", {"ff"}),
    ("D", "C", {"pos_emb"}),
    ("E", "D", set()),
    ("skip-add", "E", {"skip"}),
    ("skip-concat", "E", {"skip"}),
])
def test_each_ablation_step_changes_one_thing(child, parent, changed):
    assert _diff(get_config(child).model, get_config(parent).model) == changed


def test_weightings_follow_the_paper():
    w = {k: (r.train.weighting, r.train.gamma) for k, r in REGISTRY.items()}
    assert w["D"][0] == "snr" and w["E"] == ("soft-min-snr", 4.0)
    assert w["minsnr-g5"] == ("min-snr", 5.0) and w["minsnr-g4"] == ("min-snr", 4.0)
    assert get_config("R1").train.objective == "ddpm" and get_config("R1").sample.steps == 250
    assert get_config("R2").train.lr == 1e-4  # DiT's optimiser settings (paper footnote 3)
    # The weighting variants share E's model (Table 5).
    for k in TABLE5_ROWS + TABLE2_ROWS[2:]:
        assert get_config(k).model == get_config("E").model


def test_resolution_adaptation_adds_one_outer_level_per_doubling():
    e = get_config("E").model
    m = e.at_resolution(512)
    assert m.widths == (384, 384, 384, 768) and m.depths == (2, 2, 2, 11)
    assert m.attention == ("neighborhood",) * 3 + ("global",)
    assert get_config("A").model.at_resolution(256).attention == ("global",) * 3
    assert get_config("ffhq-1024").model.at_resolution(128).widths == (768, 1024)
    assert get_config("R1").model.at_resolution(512).widths == (768,)
    assert get_config("R3").model.at_resolution(512).widths == (768,)  # isotropic: only more tokens


@pytest.mark.parametrize("bad", [100, 64, 0, 384, "256"])
def test_bad_resolution_is_rejected_with_its_value(bad):
    with pytest.raises(ConfigError, match=str(bad)):
        get_config("E").model.at_resolution(bad)


def test_unknown_ids_list_valid_ones():
    with pytest.raises(ConfigError, match="valid configs: R1, R2"):
        get_config("F")
    with pytest.raises(ConfigError, match="valid profiles"):
        get_profile("laptop")


def test_model_config_validation_names_the_value():
    with pytest.raises(ConfigError, match="'swin'"):
        dataclasses.replace(get_config("E").model, attention=("swin", "global"))
    with pytest.raises(ConfigError, match="head_dim"):
        dataclasses.replace(get_config("E").model, widths=(100, 768))


def test_paper_profile_is_identity_and_default_is_small():
    for k in REGISTRY:
        assert resolve(k, "paper") == get_config(k)
    e = resolve("E", "default")
    assert e.data.name == "shapes" and e.data.resolution == 32 and e.model.resolution == 32
    assert all(w % e.model.head_dim == 0 for w in e.model.widths)
    assert e.train.steps < 10_000 and e.model.num_classes == 10
    assert resolve("ffhq-1024", "default").model.num_classes == 0  # stays unconditional
    assert "FID-200" in PROFILES["default"].scale_label(get_config("E"))
    assert "FID-50k" in PROFILES["paper"].scale_label(get_config("E"))


def test_run_config_round_trips_through_json_dict():
    import json
    for k in REGISTRY:
        r = resolve(k, "default")
        assert RunConfig.from_dict(json.loads(json.dumps(r.to_dict()))) == r
