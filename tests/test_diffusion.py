"""EDM preconditioning, loss weightings (paper eq. 5, 7-9), sigma density, Karras schedule, DPM++(3M) SDE, CFG."""
import math

import pytest
import torch

from hdit.diffusion import (Denoiser, cfg_denoiser, dit_timestep, f_weighting, karras_sigmas, sample,
                            sample_sigma, scalings, sigma_from_u, stratified_uniform, weighting)

SIGMAS = torch.tensor([1e-3, 0.05, 0.3, 0.5, 1.0, 2.0, 10.0, 1e3], dtype=torch.float64)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_scalings_closed_form():
    sd = 0.5
    c_skip, c_out, c_in = scalings(SIGMAS, sd)
    for s, a, b, c in zip(SIGMAS.tolist(), c_skip.tolist(), c_out.tolist(), c_in.tolist()):
        assert a == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2), rel=1e-12)
        assert b == pytest.approx(s * sd / math.sqrt(s ** 2 + sd ** 2), rel=1e-12)
        assert c == pytest.approx(1 / math.sqrt(s ** 2 + sd ** 2), rel=1e-12)
    # unit variance of the network input and of the F-space target for data of std sigma_data
    assert torch.allclose(c_in ** 2 * (sd ** 2 + SIGMAS ** 2), torch.ones_like(SIGMAS))


@pytest.mark.parametrize("gamma", [4.0, 5.0])
def test_x0_weightings_match_eq_7_to_9(gamma):
    for s in SIGMAS.tolist():
        t = torch.tensor([s], dtype=torch.float64)
        assert weighting("snr", t, gamma).item() == pytest.approx(1 / s ** 2, rel=1e-12)
        assert weighting("min-snr", t, gamma).item() == pytest.approx(min(1 / s ** 2, gamma), rel=1e-12)
        assert weighting("soft-min-snr", t, gamma).item() == pytest.approx(1 / (s ** 2 + 1 / gamma), rel=1e-12)
    soft, hard = weighting("soft-min-snr", SIGMAS, gamma), weighting("min-snr", SIGMAS, gamma)
    assert (soft <= hard + 1e-12).all()  # smooth version lies below the clipped one ...
    assert soft[0] / hard[0] == pytest.approx(1, abs=1e-5)  # ... and matches it for sigma << and >> 1/sqrt(gamma)
    assert soft[-1] / hard[-1] == pytest.approx(1, abs=1e-5)
    with pytest.raises(ValueError, match="weighting='bogus'"):
        weighting("bogus", SIGMAS)


def test_f_space_weightings():
    sd = 0.5
    s = SIGMAS
    # soft-min-SNR, gamma 4 = 1/sd^2: (s sd)^2 / (s^2 + sd^2)^2 (docs/METHOD.md §3)
    assert torch.allclose(f_weighting("soft-min-snr", s, 4.0, sd), (s * sd) ** 2 / (s ** 2 + sd ** 2) ** 2, rtol=1e-12)
    # SNR: c_out^2 / s^2 = sd^2 / (s^2 + sd^2)
    assert torch.allclose(f_weighting("snr", s, 4.0, sd), sd ** 2 / (s ** 2 + sd ** 2), rtol=1e-12)
    # min-SNR (paper eq. 5): min(SNR, gamma) * s^2 sd^2 / (s^2 + sd^2)
    exp = torch.minimum(s ** -2, torch.tensor(5.0, dtype=s.dtype)) * s ** 2 * sd ** 2 / (s ** 2 + sd ** 2)
    assert torch.allclose(f_weighting("min-snr", s, 5.0, sd), exp, rtol=1e-12)


class _Linear(torch.nn.Module):
    """A random per-pixel linear map standing in for the network (contract: forward(x, noise_cond, labels))."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.seen = []

    def forward(self, x, noise_cond, class_labels=None):
        self.seen.append((x, noise_cond, class_labels))
        return self.conv(x) * (1 + noise_cond.reshape(-1, 1, 1, 1))


@pytest.mark.parametrize("name", ["snr", "min-snr", "soft-min-snr"])
def test_f_space_loss_equals_weighted_x0_loss(name):
    torch.manual_seed(0)
    net = _Linear().double()
    den = Denoiser(net, 0.5)
    x0 = torch.rand(6, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    sigma = torch.tensor([0.01, 0.2, 0.5, 1.0, 5.0, 100.0], dtype=torch.float64)
    loss = den.loss(x0, noise, sigma, None, name, 4.0)
    d = den(x0 + noise * sigma.reshape(-1, 1, 1, 1), sigma)
    x0_loss = weighting(name, sigma, 4.0) * (d - x0).pow(2).flatten(1).mean(1)
    assert torch.allclose(loss, x0_loss, rtol=1e-9)


def test_denoiser_noise_conditioning():
    net = _Linear()
    sigma = torch.tensor([1e-3, 1.0, 1e3])
    Denoiser(net, 0.5, "c_noise")(torch.zeros(3, 3, 2, 2), sigma)
    assert torch.allclose(net.seen[-1][1], sigma.log() / 4)
    Denoiser(net, 0.5, "dit_timestep")(torch.zeros(3, 3, 2, 2), sigma)
    assert torch.allclose(net.seen[-1][1], torch.tensor([0.0, 500.0, 1000.0]), atol=1e-3)
    assert torch.allclose(dit_timestep(sigma), torch.tensor([0.0, 500.0, 1000.0]), atol=1e-3)
    with pytest.raises(ValueError, match="noise_cond"):
        Denoiser(net, 0.5, "t")


# Golden sigma(u) of the authors' interpolated-cosine density (sigma_data 0.5, range [1e-3, 1e3]),
# computed from their formula (u = 0 is sigma_max): one row per training resolution.
GOLDEN_U = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)
GOLDEN_SIGMA = {
    32: (6.323, 3.152, 1.208, 0.5008, 0.2079, 0.08009, 0.04029),
    64: (12.14, 5.863, 2.028, 0.7076, 0.2471, 0.08579, 0.04169),
    128: (23.18, 10.88, 3.405, 1.000, 0.2937, 0.09191, 0.04315),
    256: (43.78, 20.09, 5.707, 1.413, 0.3491, 0.09848, 0.04466),
    512: (81.01, 36.74, 9.537, 1.994, 0.4149, 0.1055, 0.04622),
    1024: (144.4, 65.91, 15.84, 2.808, 0.4926, 0.1130, 0.04784),
}


@pytest.mark.parametrize("resolution", sorted(GOLDEN_SIGMA))
def test_sigma_density_golden_table(resolution):
    """The whole quantile function, not only the median: the reversed interpolation has the same median
    but an interquartile range of 0.59-1.71 instead of 0.29-3.41 at 128 px."""
    got = sigma_from_u(torch.tensor(GOLDEN_U, dtype=torch.float64), resolution)
    want = torch.tensor(GOLDEN_SIGMA[resolution], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-3, atol=0), (resolution, got.tolist())


@pytest.mark.parametrize("resolution", sorted(GOLDEN_SIGMA))
def test_sigma_density_monotonic_and_ends(resolution):
    dense = sigma_from_u(torch.linspace(0, 1, 20001, dtype=torch.float64), resolution)
    assert (dense[1:] < dense[:-1]).all()  # strictly decreasing quantile function: no pile-up of draws
    assert dense[0].item() == pytest.approx(1e3, rel=1e-6) and dense[-1].item() == pytest.approx(1e-3, rel=1e-6)


def test_sigma_density_spread_of_draws():
    """Stratified draws at 128 px: median 1.0 and the interquartile range of the golden table."""
    g = torch.Generator().manual_seed(0)
    s = sample_sigma(4000, 128, g).double()
    q = torch.quantile(s, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    assert q == pytest.approx([0.2937, 1.000, 3.405], rel=0.02)
    u = torch.tensor([0.5])
    assert sigma_from_u(u, 32).item() == pytest.approx(0.5, abs=2e-3)  # no shift at the 32 px reference


def test_stratified_u():
    g = torch.Generator().manual_seed(1)
    u = stratified_uniform(8, g)
    assert ((u >= torch.arange(8) / 8) & (u < torch.arange(1, 9) / 8)).all()
    u = stratified_uniform(12, g)  # the global batch's strata, sliced per rank by the trainer (hdit.draws)
    assert (u.floor() == 0).all() and (torch.floor(u * 12) == torch.arange(12)).all()


def test_karras_schedule():
    s = karras_sigmas(50, 1e-3, 1e3, 7.0)
    assert len(s) == 51 and s[-1] == 0
    assert s[0].item() == pytest.approx(1e3, rel=1e-6) and s[-2].item() == pytest.approx(1e-3, rel=1e-5)
    mid = ((1e3 ** (1 / 7) + (1e-3 ** (1 / 7) - 1e3 ** (1 / 7)) * 0.5) ** 7)
    assert karras_sigmas(3, 1e-3, 1e3, 7.0)[1].item() == pytest.approx(mid, rel=1e-5)
    assert (s[1:-1] < s[:-2]).all()


def _gaussian_denoiser(mu, std):
    """Exact D(x, sigma) = E[x0 | x] for x0 ~ N(mu, std^2) per dimension."""
    def d(x, sigma):
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return mu + std ** 2 / (std ** 2 + s2) * (x - mu)
    return d


@pytest.mark.parametrize("steps,eta,rtol", [(50, 1.0, 0.035), (50, 0.0, 0.02), (100, 1.0, 0.02)])
def test_sampler_reproduces_gaussian_data(steps, eta, rtol):
    """With the exact denoiser of Gaussian data the sampler returns the data distribution.

    (At 50 steps DPM++(3M) SDE is within ~1.5% in std; a first-order SDE step would be ~20% low.)
    """
    mu = torch.tensor([0.3, -0.5, 0.0])
    std = torch.tensor([0.4, 0.1, 1.0])
    n = 40000
    g = torch.Generator().manual_seed(0)
    x = sample(_gaussian_denoiser(mu, std), (n, 3), steps=steps, eta=eta, generator=g)
    assert ((x.mean(0) - mu).abs() < 4 * std / n ** 0.5 + 2e-3).all()
    assert torch.allclose(x.std(0), std, rtol=rtol)


def test_sampler_last_step_returns_denoised_and_is_seeded():
    calls = []

    def den(x, sigma):
        calls.append(sigma[0].item())
        return torch.full_like(x, 0.25)  # a constant "data" prediction

    x = sample(den, (4, 3, 2, 2), steps=7, generator=torch.Generator().manual_seed(3))
    assert len(calls) == 7 and calls[0] == pytest.approx(1e3, rel=1e-5) and calls[-1] == pytest.approx(1e-3, rel=1e-4)
    assert torch.equal(x, torch.full_like(x, 0.25))
    d = _gaussian_denoiser(torch.zeros(2), torch.ones(2))
    a = sample(d, (5, 2), steps=5, generator=torch.Generator().manual_seed(9))
    b = sample(d, (5, 2), steps=5, generator=torch.Generator().manual_seed(9))
    c = sample(d, (5, 2), steps=5, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfg():
    batches = []

    def den(x, sigma, labels):  # D_c = label value, D_u (null = 10) = 1
        batches.append(len(x))
        return labels.float().reshape(-1, 1).expand_as(x).clone().masked_fill((labels == 10).reshape(-1, 1), 1.0)

    labels = torch.tensor([3, 5])
    x, sigma = torch.zeros(2, 4), torch.ones(2)
    assert torch.equal(cfg_denoiser(den, labels, 10, 1.0)(x, sigma), torch.tensor([[3.0] * 4, [5.0] * 4]))
    assert batches == [2]  # w = 1: one conditional pass, no unconditional one
    out = cfg_denoiser(den, labels, 10, 2.5)(x, sigma)  # D_u + w (D_c - D_u)
    assert torch.allclose(out, torch.tensor([[1 + 2.5 * 2] * 4, [1 + 2.5 * 4] * 4]))
    assert batches == [2, 4]  # both passes in one batch
