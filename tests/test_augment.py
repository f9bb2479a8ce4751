"""Non-leaking augmentation (FFHQ-1024, Table 6 probability 0.12): exact identity at zero, the geometry of
each transform, the per-transform probability, the model being told, and resume exactness."""
from dataclasses import replace

import pytest
import torch

from hdit.data.augment import AUG_DIMS, affine_matrices, apply_augment, non_leaky_augment, sample_augment_cond
from hdit.profiles import resolve
from hdit.train import TrainError, train

pytestmark = pytest.mark.usefixtures("one_thread")


def cond(**values):
    names = ("xflip", "yflip", "log_scale", "sin", "cos_m1", "aniso_c", "aniso_s", "tx", "ty")
    c = torch.zeros(1, AUG_DIMS)
    for k, v in values.items():
        c[0, names.index(k)] = v
    return c


def test_zero_vector_is_exact_identity_and_prob_zero_draws_zeros():
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(apply_augment(x, torch.zeros(4, AUG_DIMS)), x)
    y, c = non_leaky_augment(x, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(y, x) and torch.equal(c, torch.zeros(4, AUG_DIMS))


def test_transforms_have_the_documented_geometry():
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(apply_augment(x, cond(xflip=1)), x.flip(-1))
    assert torch.equal(apply_augment(x, cond(yflip=1)), x.flip(-2))
    # rotation by +90 degrees (sin 1, cos 0) on pixel centres: a lossless quarter turn
    torch.testing.assert_close(apply_augment(x, cond(sin=1.0, cos_m1=-1.0)), torch.rot90(x, -1, dims=(-2, -1)))
    # translation by 1/8 of an 8-pixel image = one pixel to the right (reflection fills the left column)
    torch.testing.assert_close(apply_augment(x, cond(tx=1 / 8))[..., 1:], x[..., :-1])
    # anisotropy a = 1 on axis 0: x stretched by 2, y squeezed by 2, determinant 1
    m = affine_matrices(cond(aniso_c=1.0))[0]
    torch.testing.assert_close(m, torch.diag(torch.tensor([2.0, 0.5, 1.0])))
    m = affine_matrices(cond(log_scale=0.5, sin=0.6, cos_m1=-0.2, aniso_s=0.3, tx=0.1))[0]
    assert torch.linalg.det(m[:2, :2]).item() == pytest.approx(2.0, rel=1e-5)  # only the isotropic scale changes area


def test_each_transform_is_on_with_the_given_probability():
    c = sample_augment_cond(40_000, 0.12, torch.Generator().manual_seed(0))
    assert c.shape == (40_000, AUG_DIMS)
    assert (c[:, 2] != 0).float().mean().item() == pytest.approx(0.12, abs=0.01)  # isotropic scale
    assert (c[:, 7] != 0).float().mean().item() == pytest.approx(0.12, abs=0.01)  # translation
    assert (c[:, 0] != 0).float().mean().item() == pytest.approx(0.06, abs=0.01)  # flip on, then heads
    assert torch.allclose(c[:, 3] ** 2 + (c[:, 4] + 1) ** 2, torch.ones(40_000))  # a valid rotation
    with pytest.raises(ValueError, match="1.5"):
        sample_augment_cond(2, 1.5, torch.Generator())
    with pytest.raises(ValueError, match=r"\(2, 9\)"):
        apply_augment(torch.zeros(2, 3, 4, 4), torch.zeros(2, 8))


def test_trainer_passes_the_vector_to_the_model():
    from hdit.backbones import build_model

    run = resolve("ffhq-1024", "default")
    assert run.train.augment_prob == 0.12  # Table 6, kept by the default profile
    run = replace(run, train=replace(run.train, augment_prob=1.0))
    model = build_model(run.model)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[3] if len(args) > 3 else None))
    x = torch.rand(4, 3, run.data.resolution, run.data.resolution) * 2 - 1
    import copy

    from hdit.step import TrainStep, autocast_args, make_optimizer

    step = TrainStep(run, model, model, copy.deepcopy(model), make_optimizer(model, run),
                     autocast_args(torch.device("cpu"), "bf16"))
    loss = step(x, None, 0)  # the trainer's own step: augmentation, σ draw, loss, AdamW, EMA
    assert torch.isfinite(loss).all() and seen[0] is not None and seen[0].shape == (4, AUG_DIMS)
    assert seen[0].abs().sum() > 0


def test_resume_with_augmentation_is_bitwise_equal(tmp_path):
    run = resolve("ffhq-1024", "default")
    run = replace(run, train=replace(run.train, batch_size=4, augment_prob=0.5))
    kw = dict(checkpoint_every=2, log_every=1, progress=False)
    train(run, tmp_path / "a", steps=4, **kw)
    train(run, tmp_path / "b", steps=2, **kw)
    train(run, tmp_path / "b", steps=4, resume=True, **kw)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_augmentation_needs_the_hdit_conditioning(tmp_path):
    run = resolve("R2", "default")
    run = replace(run, train=replace(run.train, augment_prob=0.12))
    with pytest.raises(TrainError, match="augment_prob=0.12"):
        train(run, tmp_path / "r2", steps=1, progress=False)
