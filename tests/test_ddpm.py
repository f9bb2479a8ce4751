"""R1's Gaussian diffusion: schedule, respacing, posterior, KL / decoder terms, hybrid loss, sampling."""
import math

import numpy as np
import pytest
import torch

from baselines.gaussian_diffusion import (GaussianDiffusion, discretized_gaussian_log_likelihood, linear_betas,
                                          normal_kl, space_timesteps)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gd():
    return GaussianDiffusion.ddpm(1000)


def test_linear_schedule_and_respacing(gd):
    b = linear_betas(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(2e-2) and len(b) == 1000
    keep = space_timesteps(1000, 250)
    assert len(keep) == 250 and keep[0] == 0 and keep[-1] == 999
    assert np.all(np.diff(keep) >= 4) and np.all(np.diff(keep) <= 5)
    r = GaussianDiffusion.ddpm(1000, respace=250)
    assert r.num_steps == 250 and r.timestep_map.tolist() == keep
    # respacing keeps the marginals q(x_t | x_0) of the kept timesteps
    assert torch.allclose(r.alphas_cumprod, gd.alphas_cumprod[keep], rtol=1e-12)
    with pytest.raises(ValueError, match="respaced steps"):
        space_timesteps(1000, 0)


def test_posterior_matches_gaussian_conditioning(gd):
    """q(x_{t-1} | x_t, x0) from Bayes: N(sqrt(a_t) x_{t-1}, b_t) * N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1})."""
    torch.manual_seed(0)
    x0, xt = torch.randn(4, 2), torch.randn(4, 2)
    for step in (1, 10, 500, 999):
        t = torch.full((4,), step)
        beta = gd.betas[step].item()
        a, abar_prev = 1 - beta, gd.alphas_cumprod[step - 1].item()
        prec = a / beta + 1 / (1 - abar_prev)
        var = 1 / prec
        mean = var * (math.sqrt(a) / beta * xt + math.sqrt(abar_prev) / (1 - abar_prev) * x0)
        m, v, logv = gd.q_posterior(x0, xt, t)
        assert torch.allclose(m, mean, rtol=1e-5, atol=1e-6)
        assert v[0].item() == pytest.approx(var, rel=1e-6)
        assert logv[0].item() == pytest.approx(math.log(var), rel=1e-6)
    # log-variance at t = 0 is clipped to that of t = 1
    assert gd.posterior_log_variance_clipped[0] == gd.posterior_log_variance_clipped[1]


def test_q_sample_and_predict_x0_invert(gd):
    torch.manual_seed(1)
    x0, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 400, 999])
    xt = gd.q_sample(x0, t, eps)
    assert torch.allclose(gd.predict_x0(xt, t, eps), x0, atol=1e-4)
    abar = gd.alphas_cumprod[999].item()
    assert torch.allclose(xt[2], math.sqrt(abar) * x0[2] + math.sqrt(1 - abar) * eps[2], atol=1e-6)


def test_normal_kl_and_decoder_likelihood():
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(ref.item(), rel=1e-6)
    # the 256 bins of [-1, 1] carry all the probability mass, and an inner bin is a CDF difference
    grid = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, -2.0), (-0.95, -4.0), (0.0, 0.0)):
        lp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale))
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    d = torch.distributions.Normal(0.1, math.exp(-2.0))
    x = grid[100]
    exp = d.cdf(x + 1 / 255) - d.cdf(x - 1 / 255)
    lp = discretized_gaussian_log_likelihood(x, torch.tensor(0.1, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64))
    assert lp.exp().item() == pytest.approx(exp.item(), rel=1e-6)


class _Oracle(torch.nn.Module):
    """Returns the true noise and v = -1 (log-variance = log beta~_t): the exact reverse step."""

    def __init__(self, eps, v=-1.0):
        super().__init__()
        self.eps, self.v = eps, torch.nn.Parameter(torch.full_like(eps, v))

    def forward(self, x, t, labels=None):
        return torch.cat([self.eps, self.v], dim=1)


def test_hybrid_loss_terms(gd):
    torch.manual_seed(2)
    x0 = torch.rand(4, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 5, 300, 999])
    terms = gd.training_losses(_Oracle(noise), x0, t, noise)
    assert torch.allclose(terms["mse"], torch.zeros(4), atol=1e-10)
    assert torch.allclose(terms["vb"], torch.zeros(4), atol=1e-5)  # exact mean and variance: KL = 0
    # t = 0: decoder NLL in bits/dim of x0 under N(x0_hat, beta~_1)
    t0 = torch.zeros(4, dtype=torch.long)
    term0 = gd.training_losses(_Oracle(noise), x0, t0, noise)["vb"]
    xt = gd.q_sample(x0, t0, noise)
    mean, _, _ = gd.q_posterior(gd.predict_x0(xt, t0, noise), xt, t0)
    ll = discretized_gaussian_log_likelihood(x0, mean, 0.5 * gd.posterior_log_variance_clipped[0].float())
    assert torch.allclose(term0, -ll.flatten(1).mean(1) / math.log(2), rtol=1e-5)
    # a wrong variance costs KL > 0; lambda * T = 0.001 * 1000 = 1 scales L_t
    t = torch.tensor([1, 5, 20, 50])  # (late steps have beta ~ beta~, so any v is nearly right there)
    wrong = gd.training_losses(_Oracle(noise, v=0.5), x0, t, noise)
    mean, log_var, _ = gd.p_mean_variance(torch.cat([noise, torch.full_like(noise, 0.5)], 1), gd.q_sample(x0, t, noise), t,
                                          clip_denoised=False)
    exp = gd.vb_terms_bpd(mean, log_var, x0, gd.q_sample(x0, t, noise), t)
    assert (wrong["vb"] > 1e-4).all() and torch.allclose(wrong["vb"], exp)
    assert torch.allclose(wrong["loss"], wrong["mse"] + wrong["vb"])


def test_vlb_gradient_stops_at_the_mean(gd):
    torch.manual_seed(3)
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.eps = torch.nn.Parameter(torch.randn_like(x0))
            self.v = torch.nn.Parameter(torch.zeros_like(x0))

        def forward(self, x, t, labels=None):
            return torch.cat([self.eps, self.v], 1)

    net = Net()
    gd.training_losses(net, x0, torch.tensor([10, 700]), noise)["vb"].sum().backward()
    assert net.eps.grad is None or torch.count_nonzero(net.eps.grad) == 0
    assert torch.count_nonzero(net.v.grad) > 0


def _gaussian_eps_model(mu, s, v):
    abar_full = GaussianDiffusion.ddpm(1000).alphas_cumprod

    def model_fn(x, t_model):  # the model sees original timesteps (respacing map)
        abar = abar_full[t_model.long()].float().reshape(-1, 1)
        # E[eps | x_t] for x0 ~ N(mu, s^2): sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)
        eps = (1 - abar).sqrt() * (x - abar.sqrt() * mu) / (abar * s ** 2 + 1 - abar)
        return torch.cat([eps, torch.full_like(eps, v)], 1)

    return model_fn


def test_ancestral_sampling_on_gaussian_data():
    """Exact eps-predictor for x0 ~ N(mu, s^2): DDPM sampling recovers the data distribution.

    The reverse variance bounds beta~_t (v = -1) and beta_t (v = +1) bracket the true std, tightly at 1000
    steps; at DiT's 250 respaced steps the learned interpolation has room to matter.
    """
    mu, s, n = 0.2, 0.3, 20000
    stds = {}
    for steps in (1000, 250):
        r = GaussianDiffusion.ddpm(1000, respace=steps)
        for v in (-1.0, 1.0):
            x = r.p_sample_loop(_gaussian_eps_model(mu, s, v), (n, 1), generator=torch.Generator().manual_seed(0),
                                clip_denoised=False)
            assert x.mean().item() == pytest.approx(mu, abs=0.01)
            stds[steps, v] = x.std().item()
    assert stds[1000, -1.0] == pytest.approx(s, rel=0.02) and stds[1000, 1.0] == pytest.approx(s, rel=0.02)
    assert stds[250, -1.0] < s * 0.98 < s * 1.01 < stds[250, 1.0]
    assert stds[250, -1.0] == pytest.approx(s, rel=0.06) and stds[250, 1.0] == pytest.approx(s, rel=0.06)
