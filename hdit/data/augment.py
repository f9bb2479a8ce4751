"""Non-leaking geometric augmentation (paper Sec. 5 "Training": "for runs on small datasets, we apply a
non-leaking augmentation scheme akin to (Karras et al., 2020a)"; Table 6: probability 0.12 for FFHQ-1024).

Each transform is switched on per image with probability `prob` (ADA's p). The model is told what was
done through a 9-dim conditioning vector (the authors' model has a 9-feature augmentation embedding,
`hdit.model.hourglass.AUG_FEATURES`), and sampling passes zeros = "not augmented", so augmented images
cannot leak into samples. The vector, all zeros for the identity:

    0 x-flip (0/1)           1 y-flip (0/1)          2 log2 of the isotropic scale
    3 sin(rotation)          4 cos(rotation) - 1     5, 6 log2 anisotropy * (cos, sin) of twice its axis angle
    7, 8 translation (x, y) as a fraction of the image size

Flips are exact; the other transforms are one affine resampling (bilinear, reflection padding), done
only for the images that drew one. Random numbers come from the trainer's generator, so a resumed run
draws the same augmentations.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUG_DIMS = 9
SCALE_STD = 0.2  # log2 std of isotropic and anisotropic scaling (ADA's geometric defaults)
TRANSLATE_STD = 0.125  # fraction of the image


def sample_augment_cond(n: int, prob: float, gen: torch.Generator, device=None) -> torch.Tensor:
    """[n, 9] augmentation parameters; each transform is on with probability `prob`, else zeros."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"augmentation probability {prob}; expected a value in [0, 1]")
    device = device or gen.device

    def on(shape=(n,)):
        return (torch.rand(shape, generator=gen, device=device) < prob).float()

    def rand(*shape):
        return torch.rand(shape, generator=gen, device=device)

    def randn(*shape):
        return torch.randn(shape, generator=gen, device=device)

    xflip = on() * (rand(n) < 0.5).float()
    yflip = on() * (rand(n) < 0.5).float()
    log_scale = on() * randn(n) * SCALE_STD
    angle = on() * (rand(n) * 2 - 1) * math.pi
    aniso_on = on()
    log_aniso, two_phi = aniso_on * randn(n) * SCALE_STD, rand(n) * 2 * math.pi  # axis phi uniform in [0, pi)
    shift = on()[:, None] * randn(n, 2) * TRANSLATE_STD
    return torch.stack([xflip, yflip, log_scale, angle.sin(), angle.cos() - 1, log_aniso * two_phi.cos(),
                        log_aniso * two_phi.sin(), shift[:, 0], shift[:, 1]], dim=1)


def affine_matrices(cond: torch.Tensor) -> torch.Tensor:
    """[n, 3, 3] forward transforms (scale, anisotropy, rotation, translation; not the flips) in the
    normalised [-1, 1] image coordinates of `F.affine_grid`."""
    n = cond.shape[0]
    eye = torch.eye(3, device=cond.device, dtype=cond.dtype).expand(n, 3, 3)
    scale = eye.clone()
    scale[:, 0, 0] = scale[:, 1, 1] = torch.exp2(cond[:, 2])
    sin, cos = cond[:, 3], cond[:, 4] + 1
    rot = eye.clone()
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
    # anisotropy: stretch by 2^a along the axis at angle phi, 2^-a across it; (5, 6) = a (cos 2phi, sin 2phi)
    a = torch.hypot(cond[:, 5], cond[:, 6])
    phi = torch.atan2(cond[:, 6], cond[:, 5]) / 2
    c, s, k = phi.cos(), phi.sin(), torch.exp2(a)
    aniso = eye.clone()
    aniso[:, 0, 0] = k * c * c + s * s / k
    aniso[:, 1, 1] = k * s * s + c * c / k
    aniso[:, 0, 1] = aniso[:, 1, 0] = (k - 1 / k) * c * s
    shift = eye.clone()
    shift[:, 0, 2], shift[:, 1, 2] = 2 * cond[:, 7], 2 * cond[:, 8]  # fraction of the image -> [-1, 1] units
    return shift @ rot @ aniso @ scale


def apply_augment(x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Apply the augmentations described by `cond` [n, 9] to images `x` [n, C, H, W] (identity for zeros)."""
    if cond.shape != (x.shape[0], AUG_DIMS):
        raise ValueError(f"augmentation cond of shape {tuple(cond.shape)}; expected ({x.shape[0]}, {AUG_DIMS})")
    flip = cond[:, :2].bool()
    x = torch.where(flip[:, 0, None, None, None], x.flip(-1), x)
    x = torch.where(flip[:, 1, None, None, None], x.flip(-2), x)
    warp = (cond[:, 2:] != 0).any(dim=1)
    if warp.any():
        idx = warp.nonzero().squeeze(1)
        theta = torch.linalg.inv(affine_matrices(cond[idx].float()))[:, :2]  # output pixel -> input position
        grid = F.affine_grid(theta, list(x[idx].shape), align_corners=False)
        warped = F.grid_sample(x[idx].float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = x.index_copy(0, idx, warped.to(x.dtype))
    return x


def non_leaky_augment(x: torch.Tensor, prob: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented images, [n, 9] conditioning for the model)."""
    cond = sample_augment_cond(x.shape[0], prob, gen, device=x.device)
    return apply_augment(x, cond), cond
