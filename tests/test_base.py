"""Tests of the pure diffusion math (model/base.py): schedules, conversions, loss, steps, guidance, sample loops.

Where a test compares against a number, a comment says where the number comes from: a closed form from the
paper, an independent derivation (Gaussian conditioning), or the sampling error of a Monte-Carlo estimate.

The end-to-end sampler tests use Gaussian data x0 ~ N(mu, Sigma), for which the exact denoiser
E[x0 | x_t] is closed form (the "oracle"), so the samplers can be run to the end without training anything.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model import base, sampling
from wrap import denoise_fn

f64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def consistent_pair(shape, t, schedule, seed=0, dtype=f64):
    """Random x0 and eps and the x_t they imply at t (x_t = sqrt(ab) x0 + sqrt(1-ab) eps, written out here)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=dtype)
    eps = torch.randn(shape, generator=g, dtype=dtype)
    ab = schedule.alpha_bar[t].to(dtype)
    ab = ab.reshape(-1, *([1] * (len(shape) - 1))) if ab.ndim else ab
    return x0, eps, ab.sqrt() * x0 + (1 - ab).sqrt() * eps


class GaussianOracle:
    """Exact denoiser for data x0 ~ N(mu, Sigma) in d dims, written independently of model.base.

    x_t | x0 ~ N(sqrt(ab) x0, (1-ab) I), so (x0, x_t) is jointly Gaussian and Gaussian conditioning gives
    E[x0 | x_t] = mu + Sigma sqrt(ab) (ab Sigma + (1-ab) I)^-1 (x_t - sqrt(ab) mu)  =  mu + A_t (x_t - sqrt(ab) mu).
    """

    def __init__(self, mu: torch.Tensor, Sigma: torch.Tensor, schedule: base.Schedule):
        self.mu, self.Sigma, self.ab = mu.to(f64), Sigma.to(f64), schedule.alpha_bar
        d = mu.numel()
        eye = torch.eye(d, dtype=f64)
        ab = self.ab[:, None, None]  # (T+1, 1, 1)
        self.A = ab.sqrt() * self.Sigma @ torch.linalg.inv(ab * self.Sigma + (1 - ab) * eye)  # (T+1, d, d)

    def x0_eps(self, x_t, t):
        x = x_t.to(f64)
        k = t.cpu().round().long()  # networks get the table's step as a float time
        ab = self.ab[k][:, None]  # (B, 1)
        x0 = self.mu + torch.einsum("bij,bj->bi", self.A[k], x - ab.sqrt() * self.mu)  # (B, d)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return x0, eps, ab

    def denoiser(self, parametrisation):
        def fn(x_t, t, c):
            x0, eps, ab = self.x0_eps(x_t, t)
            out = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[parametrisation]
            return out.to(x_t.dtype)

        return fn

    def sampler_law(self, times, kind, eta=0.0, variance="beta_tilde", m=None, C=None):
        """Exact mean and covariance of a sampler's output when it is driven by this oracle.

        Every step is affine in x_t plus independent Gaussian noise, so a Gaussian start stays Gaussian and its
        moments propagate exactly: m <- M m + b, C <- M C M^T + s^2 I. The coefficients are written from the papers
        (Ho et al. 2020 eq. 7 for DDPM, Song et al. 2021 eq. 12 and 16 for DDIM), not taken from model.base.
        """
        d = self.mu.numel()
        eye = torch.eye(d, dtype=f64)
        m = torch.zeros(d, dtype=f64) if m is None else m
        C = eye.clone() if C is None else C
        for t, n in zip(times[:-1], times[1:]):
            a, an, A = self.ab[t], self.ab[n], self.A[t]
            X0, b0 = A, (eye - a.sqrt() * A) @ self.mu  # x0_hat = X0 x_t + b0
            E, be = (eye - a.sqrt() * X0) / (1 - a).sqrt(), -a.sqrt() * b0 / (1 - a).sqrt()  # eps_hat = E x_t + be
            if kind == "ddpm":
                beta = 1 - a / an
                c0, c1 = an.sqrt() * beta / (1 - a), (1 - beta).sqrt() * (1 - an) / (1 - a)
                var = (beta * (1 - an) / (1 - a) if variance == "beta_tilde" else beta) if n > 0 else 0.0
                M, b = c0 * X0 + c1 * eye, c0 * b0
            else:
                var = eta**2 * (1 - an) / (1 - a) * (1 - a / an)
                ce = (1 - an - var).sqrt()
                M, b = an.sqrt() * X0 + ce * E, an.sqrt() * b0 + ce * be
            m, C = M @ m + b, M @ C @ M.T + var * eye
        return m, C


def assert_moments(samples, mean, cov, n_se=4.5):
    """Sample mean / covariance within n_se standard errors of (mean, cov), entry by entry.

    Standard errors for N Gaussian samples: SE(mean_i) = sqrt(C_ii / N) and SE(cov_ij) = sqrt((C_ii C_jj + C_ij^2) / N)
    (the variance of a product of two jointly Gaussian variables). 4.5 SE per entry makes a false alarm over the
    dozen entries checked here about 1e-4 for any seed, while a wrong coefficient in a step moves them by far more.
    """
    x = samples.to(f64)
    N = x.shape[0]
    se_m = (cov.diag() / N).sqrt()
    se_c = ((cov.diag()[:, None] * cov.diag()[None, :] + cov**2) / N).sqrt()
    z_m = ((x.mean(0) - mean) / se_m).abs().max().item()
    z_c = ((torch.cov(x.T) - cov) / se_c).abs().max().item()
    assert z_m < n_se, f"mean off by {z_m:.1f} standard errors"
    assert z_c < n_se, f"covariance off by {z_c:.1f} standard errors"


MU = torch.tensor([0.5, -1.0, 0.25], dtype=f64)
L = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.7, 0.0], [-0.3, 0.2, 0.5]], dtype=f64)
SIGMA = L @ L.T  # correlated, variances 1.0 / 0.85 / 0.38
N_SAMPLES = 20_000


# ----------------------------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_schedule_invariants(name, T):
    s = base.make_schedule(name, T)
    ab = s.alpha_bar
    assert ab.dtype == f64 and ab.shape == (T + 1,) and s.T == T
    assert ab[0].item() == 1.0
    assert bool((ab[1:] < ab[:-1]).all()) and ab[-1].item() > 0
    # betas reconstruct alpha_bar: alpha_bar_t = prod_{s<=t} (1 - beta_s) (Ho et al. eq. 4)
    assert s.betas.shape == (T,)
    torch.testing.assert_close(torch.cumprod(1 - s.betas, 0), ab[1:], rtol=1e-12, atol=0)
    torch.testing.assert_close(s.sqrt_alpha_bar**2, ab)
    torch.testing.assert_close(s.sqrt_one_minus_alpha_bar**2, 1 - ab)
    assert s.log_snr[0].item() == math.inf
    torch.testing.assert_close(s.log_snr[1:], torch.log(ab[1:] / (1 - ab[1:])))


def test_linear_schedule_closed_form():
    # Ho et al. 2020, Sec. 4: beta_1 = 1e-4 ... beta_T = 0.02 linearly, alpha_bar = cumprod(1 - beta)
    T = 1000
    s = base.make_schedule("linear", T)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert s.betas[499].item() == pytest.approx(1e-4 + 499 / 999 * (0.02 - 1e-4), rel=1e-10)
    expected = [1.0]
    for k in range(T):
        expected.append(expected[-1] * (1 - (1e-4 + k / (T - 1) * (0.02 - 1e-4))))
    torch.testing.assert_close(s.alpha_bar, torch.tensor(expected, dtype=f64), rtol=1e-11, atol=0)


def test_cosine_schedule_closed_form():
    # Nichol & Dhariwal 2021, eq. 17: alpha_bar_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008.
    # f(T) = 0 makes beta_T = 1, so only the last beta is clipped (to 0.999); every alpha_bar before it is f(t)/f(0).
    T = 1000
    s = base.make_schedule("cosine", T)

    def f(t):
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (1, 10, 500, 900, T - 1):
        assert s.alpha_bar[t].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    assert s.betas[-1].item() == pytest.approx(0.999, abs=1e-15)
    assert bool((s.betas[:-1] < 0.999).all())
    # after clipping, alpha_bar_T = alpha_bar_{T-1} (1 - 0.999): consistent with the clipped beta, not f(T)/f(0) = 0
    assert s.alpha_bar[T].item() == pytest.approx(f(T - 1) / f(0) * 1e-3, rel=1e-9)


def test_sigmoid_schedule_closed_form():
    # Seed sheet 000, eq. 10: beta_t = beta_start + sigmoid(-s + 2 t/T s) (beta_end - beta_start), s_limit = 6
    T, b0, b1, sl = 1000, 1e-4, 0.02, 6.0
    s = base.make_schedule("sigmoid", T)

    def beta(t):
        return b0 + 1 / (1 + math.exp(-(-sl + 2 * t / T * sl))) * (b1 - b0)

    for t in (1, T // 2, T):
        assert s.betas[t - 1].item() == pytest.approx(beta(t), rel=1e-12)
    # at t = T/2 the logistic is 1/2: beta is the midpoint
    assert s.betas[T // 2 - 1].item() == pytest.approx((b0 + b1) / 2, rel=1e-12)


def test_schedule_kwargs_and_registry():
    assert set(base.SCHEDULES) == {"linear", "cosine", "sigmoid"}
    s = base.make_schedule("linear", 100, beta_start=1e-3, beta_end=0.05)
    assert s.betas[0].item() == pytest.approx(1e-3) and s.betas[-1].item() == pytest.approx(0.05)
    s = base.make_schedule("cosine", 100, max_beta=0.9)
    assert s.betas.max().item() == pytest.approx(0.9)


def test_coef_shapes_dtypes():
    s = base.make_schedule("cosine", 100)
    img = torch.zeros(4, 3, 8, 8)
    pts = torch.zeros(4, 2, dtype=torch.float16)
    t = torch.tensor([0, 1, 50, 100])
    c = base.coef(s.alpha_bar, t, img)
    assert c.shape == (4, 1, 1, 1) and c.dtype == torch.float32
    torch.testing.assert_close(c.flatten(), s.alpha_bar[t].float())
    c = s.gather("sqrt_alpha_bar", 7, pts)  # an int t is used for the whole batch
    assert c.shape == (4, 1) and c.dtype == torch.float16
    torch.testing.assert_close(c.flatten(), s.sqrt_alpha_bar[[7] * 4].half())


# ----------------------------------------------------------------------------------------------------------------
# forward process and conversions
# ----------------------------------------------------------------------------------------------------------------
def test_q_sample_statistics():
    # x_t | x0 ~ N(sqrt(ab) x0, (1 - ab) I) (Ho et al. eq. 4); checked with 200k draws, tolerance 5 standard errors
    s = base.make_schedule("cosine", 1000)
    n, t = 200_000, 600
    ab = s.alpha_bar[t].item()
    x0 = torch.full((n, 1), 1.5, dtype=f64)
    eps = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=f64)
    x_t = base.q_sample(x0, t, eps, s)
    var = 1 - ab
    assert abs(x_t.mean().item() - math.sqrt(ab) * 1.5) < 5 * math.sqrt(var / n)
    assert abs(x_t.var().item() - var) < 5 * var * math.sqrt(2 / n)
    # per-sample t: each row uses its own alpha_bar
    tt = torch.tensor([1, 500, 1000])
    x0, eps, x_t = consistent_pair((3, 4), tt, s)
    torch.testing.assert_close(base.q_sample(x0, tt, eps, s), x_t)


@pytest.mark.parametrize("parametrisation", ["eps", "x0", "v"])
def test_round_trip_all_parametrisations(parametrisation):
    # target -> (x0, eps) must return the (x0, eps) that produced x_t, at every t from 1 to T (per-sample t)
    s = base.make_schedule("cosine", 1000)
    t = torch.tensor([1, 2, 10, 250, 500, 750, 999, 1000])
    x0, eps, x_t = consistent_pair((8, 2, 3, 3), t, s)
    target = base.training_target(x0, eps, t, s, parametrisation)
    x0_hat, eps_hat = base.to_x0_eps(target, x_t, t, s, parametrisation)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)


def test_conversion_functions_and_v_sign():
    ab = torch.tensor([[0.3]], dtype=f64)
    x0, eps = torch.tensor([[2.0]], dtype=f64), torch.tensor([[-0.5]], dtype=f64)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = base.v_from_x0_eps(x0, eps, ab)
    # Salimans & Ho: v = sqrt(ab) eps - sqrt(1 - ab) x0
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)
    torch.testing.assert_close(base.x0_from_v(x_t, v, ab), x0)
    torch.testing.assert_close(base.eps_from_v(x_t, v, ab), eps)
    torch.testing.assert_close(base.x0_from_eps(x_t, eps, ab), x0)
    torch.testing.assert_close(base.eps_from_x0(x_t, x0, ab), eps)
    # the sign of v: v -> eps as ab -> 1 (no noise), v -> -x0 as ab -> 0 (pure noise)
    one, zero = torch.ones(1, 1, dtype=f64), torch.zeros(1, 1, dtype=f64)
    torch.testing.assert_close(base.v_from_x0_eps(x0, eps, one), eps)
    torch.testing.assert_close(base.v_from_x0_eps(x0, eps, zero), -x0)
    s = base.make_schedule("cosine", 1000)
    xs, es, _ = consistent_pair((2, 5), 1, s)
    # at the schedule's ends: v - eps = (sqrt(ab) - 1) eps - sqrt(1 - ab) x0 with sqrt(1 - ab_1) = 6.3e-3 at t = 1,
    # and v + x0 = sqrt(ab) eps + (1 - sqrt(1 - ab)) x0 with sqrt(ab_T) = 4.9e-5 at t = T
    tol_1 = (1 - s.alpha_bar[1]).sqrt().item() * xs.abs().max().item() * 1.01
    assert (base.training_target(xs, es, 1, s, "v") - es).abs().max().item() < tol_1
    tol_T = s.alpha_bar[1000].sqrt().item() * es.abs().max().item() * 1.01
    assert (base.training_target(xs, es, 1000, s, "v") + xs).abs().max().item() < tol_T


# ----------------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parametrisation", ["eps", "x0", "v"])
def test_loss_values(parametrisation):
    s = base.make_schedule("cosine", 1000)
    t = torch.tensor([1, 300, 700, 1000])
    x0, eps, _ = consistent_pair((4, 2, 4, 4), t, s)
    target = base.training_target(x0, eps, t, s, parametrisation)
    # a perfect prediction has zero loss
    assert base.diffusion_loss(target, x0, eps, t, s, parametrisation).abs().max().item() == 0.0
    err = torch.linspace(-1, 1, 32, dtype=f64)
    pred = target + err.reshape(1, 2, 4, 4)
    l2 = base.diffusion_loss(pred, x0, eps, t, s, parametrisation, "l2")
    l1 = base.diffusion_loss(pred, x0, eps, t, s, parametrisation, "l1")
    assert l2.shape == (4,)
    torch.testing.assert_close(l2, err.square().mean().expand(4))
    torch.testing.assert_close(l1, err.abs().mean().expand(4))


@pytest.mark.parametrize("parametrisation", ["eps", "x0", "v"])
def test_min_snr_weight_is_x0_space_weight(parametrisation):
    # Hang et al. 2023: the weighted loss equals min(SNR_t, gamma) * ||x0_hat - x0||^2 in every parametrisation,
    # where x0_hat is the x0 implied by the prediction. This ties the weights to the conversions.
    s = base.make_schedule("cosine", 1000)
    gamma = 5.0
    t = torch.tensor([1, 50, 200, 400, 600, 900, 1000])  # SNR from ~2e4 (clipped to gamma) down to ~2e-9
    x0, eps, x_t = consistent_pair((7, 3, 4, 4), t, s)
    pred = base.training_target(x0, eps, t, s, parametrisation)
    pred = pred + 0.3 * torch.randn(pred.shape, generator=torch.Generator().manual_seed(5), dtype=f64)
    weighted = base.diffusion_loss(pred, x0, eps, t, s, parametrisation, min_snr_gamma=gamma)
    x0_hat, _ = base.to_x0_eps(pred, x_t, t, s, parametrisation)
    ab = s.alpha_bar[t]
    snr = ab / (1 - ab)
    expected = snr.clamp(max=gamma) * (x0_hat - x0).square().flatten(1).mean(1)
    torch.testing.assert_close(weighted, expected, rtol=1e-7, atol=1e-12)
    assert torch.equal(base.diffusion_loss(pred, x0, eps, t, s, parametrisation, "l2", None),
                       (pred - base.training_target(x0, eps, t, s, parametrisation)).square().flatten(1).mean(1))


# ----------------------------------------------------------------------------------------------------------------
# single steps
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t,t_prev", [(1, 0), (2, 1), (500, 499), (1000, 999), (600, 580), (200, 0)])
def test_ddpm_posterior_by_gaussian_conditioning(t, t_prev):
    # Independent derivation: x_prev = sqrt(ab_p) x0 + sqrt(1-ab_p) e1 and x_t = sqrt(a) x_prev + sqrt(1-a) e2 with
    # a = ab_t / ab_p. Given x0, Cov(x_prev, x_t) = sqrt(a)(1-ab_p) and Var(x_t) = 1-ab_t, so
    # E[x_prev | x_t, x0] = sqrt(ab_p) x0 + sqrt(a)(1-ab_p)/(1-ab_t) (x_t - sqrt(ab_t) x0),
    # Var[x_prev | x_t, x0] = (1-ab_p) - a (1-ab_p)^2 / (1-ab_t)  (= beta_tilde of Ho et al. eq. 7).
    s = base.make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(1)
    x0, x_t = torch.randn(3, 5, generator=g, dtype=f64), torch.randn(3, 5, generator=g, dtype=f64)
    ab_t, ab_p = s.alpha_bar[t], s.alpha_bar[t_prev]
    a = ab_t / ab_p
    mean_ref = ab_p.sqrt() * x0 + a.sqrt() * (1 - ab_p) / (1 - ab_t) * (x_t - ab_t.sqrt() * x0)
    var_ref = (1 - ab_p) - a * (1 - ab_p) ** 2 / (1 - ab_t)
    mean, var = base.ddpm_posterior(x_t, t, t_prev, x0, s)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-10, atol=1e-12)
    assert isinstance(var, float)  # one time for the whole batch: a Python float (per-sample times: a tensor)
    torch.testing.assert_close(torch.tensor(var, dtype=f64), var_ref, rtol=1e-10, atol=1e-15)
    _, var_beta = base.ddpm_posterior(x_t, t, t_prev, x0, s, variance="beta")
    torch.testing.assert_close(torch.tensor(var_beta, dtype=f64), 1 - a)
    _, var_per_sample = base.ddpm_posterior(x_t, torch.full((3,), t), torch.full((3,), t_prev), x0, s)
    torch.testing.assert_close(var_per_sample, var_ref.expand(3, 1), rtol=1e-10, atol=1e-15)
    # the step itself: mean + std * noise, and no noise at all when t_prev = 0
    z = torch.randn(3, 5, generator=g, dtype=f64)
    step = base.ddpm_step(x_t, t, t_prev, x0, s, noise=z)
    torch.testing.assert_close(step, mean_ref + (var_ref.sqrt() if t_prev > 0 else 0.0) * z)


def test_ddpm_mean_equals_sheet_eps_form():
    # Seed sheet 000 eq. 8 / Ho et al. eq. 11: mean = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1-ab_t) eps) with
    # alpha_t = 1 - beta_t, which must agree with the posterior mean from (x0, eps) when x0 and eps are consistent
    # with x_t.
    s = base.make_schedule("linear", 1000)
    for t in (1, 2, 100, 999, 1000):
        x0, eps, x_t = consistent_pair((4, 3), t, s, seed=t)
        beta = s.betas[t - 1]
        sheet = (x_t - beta / (1 - s.alpha_bar[t]).sqrt() * eps) / (1 - beta).sqrt()
        mean, _ = base.ddpm_posterior(x_t, t, t - 1, x0, s)
        torch.testing.assert_close(mean, sheet, rtol=1e-9, atol=1e-10)


def test_ddpm_step_per_sample_t_and_generator():
    s = base.make_schedule("cosine", 100)
    t, t_prev = torch.tensor([5, 1, 60]), torch.tensor([4, 0, 59])
    x0, _, x_t = consistent_pair((3, 2, 4, 4), t, s)
    mean, _ = base.ddpm_posterior(x_t, t, t_prev, x0, s)
    out = base.ddpm_step(x_t, t, t_prev, x0, s, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[1], mean[1])  # t_prev = 0: the mean (= x0) without noise
    assert not torch.equal(out[0], mean[0]) and not torch.equal(out[2], mean[2])
    torch.testing.assert_close(mean[1], x0[1])
    again = base.ddpm_step(x_t, t, t_prev, x0, s, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_ddim_eta0_follows_forward_trajectory():
    # Song et al. eq. 12 with sigma = 0: x_next = sqrt(ab_next) x0 + sqrt(1-ab_next) eps, i.e. a consistent pair stays
    # on its own forward trajectory: the step lands on q_sample(x0, t_next, eps) for any t_next < t.
    s = base.make_schedule("cosine", 1000)
    x0, eps, x_t = consistent_pair((2, 3, 4, 4), 800, s)
    for t_next in (799, 500, 1):
        out = base.ddim_step(x_t, 800, t_next, x0, eps, s, eta=0.0)
        torch.testing.assert_close(out, base.q_sample(x0, t_next, eps, s), rtol=1e-12, atol=1e-12)
    # t_next = 0 returns x0 exactly (ab_0 = 1, sigma = 0)
    assert torch.equal(base.ddim_step(x_t, 800, 0, x0, eps, s, eta=1.0), x0)
    t_next = torch.tensor([0, 3])
    out = base.ddim_step(x_t, 800, t_next, x0, eps, s, eta=0.0)
    assert torch.equal(out[0], x0[0])


@pytest.mark.parametrize("t,t_prev", [(1000, 999), (500, 499), (2, 1), (1, 0), (600, 580), (300, 0)])
def test_ddim_eta1_matches_ddpm(t, t_prev):
    # Song et al. eq. 16: sigma(eta=1)^2 = (1-ab_prev)/(1-ab_t) (1 - ab_t/ab_prev) = beta_tilde, and with a consistent
    # pair the DDIM mean equals the DDPM posterior mean (Sec. 4.1). Means: noise = 0; stds: (noise=1) - (noise=0).
    s = base.make_schedule("cosine", 1000)
    x0, eps, x_t = consistent_pair((3, 5), t, s)
    zeros, ones = torch.zeros_like(x_t), torch.ones_like(x_t)
    ddim_mean = base.ddim_step(x_t, t, t_prev, x0, eps, s, eta=1.0, noise=zeros)
    ddpm_mean = base.ddpm_step(x_t, t, t_prev, x0, s, noise=zeros)
    torch.testing.assert_close(ddim_mean, ddpm_mean, rtol=1e-9, atol=1e-12)
    ddim_std = base.ddim_step(x_t, t, t_prev, x0, eps, s, eta=1.0, noise=ones) - ddim_mean
    ddpm_std = base.ddpm_step(x_t, t, t_prev, x0, s, noise=ones) - ddpm_mean
    torch.testing.assert_close(ddim_std, ddpm_std, rtol=1e-9, atol=1e-12)
    _, beta_tilde = base.ddpm_posterior(x_t, t, t_prev, x0, s)
    torch.testing.assert_close(ddim_std, torch.full_like(ddim_std, math.sqrt(beta_tilde)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [f64, torch.float32])
def test_int_times_take_the_scalar_path_and_match_per_sample_times(dtype):
    # A sampler loop passes one int t for the whole batch, and every coefficient is then a Python float (no tensor
    # work per step); per-sample times gather (B, 1) tables. Both must give the same steps, to float64 rounding.
    s = base.make_schedule("cosine", 1000)
    x0, eps, x_t = (v.to(dtype) for v in consistent_pair((3, 2, 4, 4), 700, s))
    prev = torch.randn_like(x0)
    B = x0.shape[0]

    def vec(t):
        return torch.full((B,), t)

    tol = dict(rtol=1e-12, atol=1e-12) if dtype == f64 else dict(rtol=1e-6, atol=1e-6)
    for t, t_next in ((700, 650), (700, 0), (1000, 1)):
        z = torch.randn_like(x0)
        pairs = [(base.ddim_step(x_t, t, t_next, x0, eps, s, eta=0.7, noise=z),
                  base.ddim_step(x_t, vec(t), vec(t_next), x0, eps, s, eta=0.7, noise=z)),
                 (base.ddpm_step(x_t, t, t_next, x0, s, noise=z), base.ddpm_step(x_t, vec(t), vec(t_next), x0, s, noise=z)),
                 (base.dpmpp_2m_step(x_t, t, t_next, x0, s), base.dpmpp_2m_step(x_t, vec(t), vec(t_next), x0, s)),
                 (base.to_x0_eps(eps, x_t, t, s, "v")[0], base.to_x0_eps(eps, x_t, vec(t), s, "v")[0]),
                 (base.q_sample(x0, t, eps, s), base.q_sample(x0, vec(t), eps, s))]
        if t < 1000:  # the second-order step, from the prediction at t + 20
            pairs.append((base.dpmpp_2m_step(x_t, t, t_next, x0, s, x0_prev=prev, t_prev=t + 20),
                          base.dpmpp_2m_step(x_t, vec(t), vec(t_next), x0, s, x0_prev=prev, t_prev=vec(t + 20))))
        for scalar, per_sample in pairs:
            assert scalar.dtype == dtype
            torch.testing.assert_close(scalar, per_sample, **tol)


def test_clip_x0_and_consistent_eps():
    s = base.make_schedule("cosine", 1000)
    x = torch.linspace(-3, 3, 13, dtype=f64).reshape(1, 13)
    assert base.clip_x0(x, None) is x and base.clip_x0(x, math.inf) is x
    torch.testing.assert_close(base.clip_x0(x, 1.0), x.clamp(-1, 1))
    # a denoiser whose x0 prediction overshoots: clipped x0 stays in range and eps is recomputed where it was
    # clipped, so sqrt(ab) x0 + sqrt(1-ab) eps still reproduces x_t exactly
    t, ab = 300, s.alpha_bar[300]
    x_t = 2.0 * torch.randn(4, 13, generator=torch.Generator().manual_seed(0), dtype=f64)

    def den(x_t, t, c):
        return 2.0 * x_t  # x0-parametrisation, values up to ~12

    x0, eps = base.predict_x0_eps(den, x_t, t, None, s, "x0", clip_limit=1.0)
    assert x0.abs().max().item() <= 1.0 and (x0.abs() == 1.0).any()
    torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x_t)
    # unclipped elements keep the network's eps bit for bit, and a huge limit is the same as none
    x0_n, eps_n = base.predict_x0_eps(den, x_t, t, None, s, "x0", clip_limit=None)
    inside = x0_n.abs() < 1.0
    assert torch.equal(eps[inside], eps_n[inside])
    x0_big, eps_big = base.predict_x0_eps(den, x_t, t, None, s, "x0", clip_limit=1e9)
    assert torch.equal(x0_big, x0_n) and torch.equal(eps_big, eps_n)


# ----------------------------------------------------------------------------------------------------------------
# guidance
# ----------------------------------------------------------------------------------------------------------------
class ToyLinear:
    """out = 2 x + 0.01 t + emb[c], records the batch size and the labels of every call."""

    def __init__(self, num_classes=3, d=4):
        self.emb = torch.arange((num_classes + 1) * d, dtype=torch.float32).reshape(num_classes + 1, d)
        self.calls = []

    def __call__(self, x, t, c):
        self.calls.append((x.shape[0], c.clone()))
        return 2 * x + 0.01 * t[:, None].float() + self.emb[c]


def test_cfg_w0_is_conditional():
    toy = ToyLinear()
    x, t, c = torch.randn(5, 4), torch.tensor([3, 4, 5, 6, 7]), torch.tensor([0, 1, 2, 0, 1])
    out = base.classifier_free_guidance(toy, 0.0, null_class=3)(x, t, c)
    assert torch.equal(out, 2 * x + 0.01 * t[:, None].float() + toy.emb[c])
    assert len(toy.calls) == 1


def test_cfg_formula_and_null_class():
    # Ho & Salimans eq. 6: out = (1 + w) out(x, c) - w out(x, null); here computed by hand from the toy's formula
    toy, null, w = ToyLinear(), 3, 1.5
    x, t, c = torch.randn(5, 4), torch.tensor([3, 4, 5, 6, 7]), torch.tensor([0, 1, 2, 0, 1])
    out = base.classifier_free_guidance(toy, w, null_class=null)(x, t, c)
    base_out = 2 * x + 0.01 * t[:, None].float()
    expected = (1 + w) * (base_out + toy.emb[c]) - w * (base_out + toy.emb[null])
    torch.testing.assert_close(out, expected)
    # one batched call of 2B: the conditional labels, then the null class for the unconditional half
    assert len(toy.calls) == 1
    size, labels = toy.calls[0]
    assert size == 10 and torch.equal(labels, torch.tensor([0, 1, 2, 0, 1, 3, 3, 3, 3, 3]))
    with pytest.raises(ValueError):
        base.classifier_free_guidance(toy, w, null_class=null)(x, t, None)


# ----------------------------------------------------------------------------------------------------------------
# timesteps and loops
# ----------------------------------------------------------------------------------------------------------------
def test_timesteps():
    assert base.timesteps_ddpm(10) == list(range(10, -1, -1))
    assert base.timesteps_ddpm(1000, 1000) == list(range(1000, -1, -1))
    assert base.timesteps_ddim(1000, 50) == list(range(1000, -1, -20))
    assert base.timesteps_ddpm(40, t_start=25) == list(range(25, -1, -1))
    # round(10 k / 4) for k = 4..0 with halves rounded up: 10, 7.5 -> 8, 5, 2.5 -> 3, 0
    assert base.timesteps_ddim(10, 4) == [10, 8, 5, 3, 0]
    for T, steps, t_start in [(200, 30, None), (1000, 7, None), (1000, 999, None), (1000, 13, 333), (5, 5, 5)]:
        ts = base.timesteps_ddim(T, steps, t_start)
        start = T if t_start is None else t_start
        assert ts[0] == start and ts[-1] == 0 and len(ts) == steps + 1
        assert all(a > b for a, b in zip(ts, ts[1:]))
        gaps = {a - b for a, b in zip(ts, ts[1:])}
        assert max(gaps) - min(gaps) <= 1  # evenly spaced up to rounding


def test_noise_dense_spacing_is_its_closed_form_and_a_valid_grid():
    # t_i = round(t_start (1 - (i / n)^2)), half up: short steps at high noise, long ones near t = 0
    assert base.timesteps_ddim(1000, 10, spacing="noise-dense") == [1000, 990, 960, 910, 840, 750, 640, 510, 360,
                                                                    190, 0]
    assert base.timesteps_ddpm(1000, 4, spacing="noise-dense") == [1000, 938, 750, 438, 0]
    for T, steps, t_start in [(1000, 25, None), (1000, 999, None), (1000, 1000, None), (200, 150, 180), (5, 5, 5)]:
        ts = base.timesteps_dpm_solver(T, steps, t_start, spacing="noise-dense")
        assert ts[0] == (t_start or T) and ts[-1] == 0 and len(ts) == steps + 1
        assert all(a > b for a, b in zip(ts, ts[1:]))  # strictly decreasing even where rounding would collide
    gaps = [a - b for a, b in zip(base.timesteps_ddim(1000, 50, spacing="noise-dense"),
                                  base.timesteps_ddim(1000, 50, spacing="noise-dense")[1:])]
    assert gaps == sorted(gaps) and (gaps[0], gaps[-1]) == (1, 40)  # growing steps towards t = 0, 20 on average
    with pytest.raises(ValueError, match="spacing"):
        base.timesteps_ddim(100, 10, spacing="karras")


def test_sampling_reproducible_and_seed_dependent():
    s = base.make_schedule("cosine", 50)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    den = lambda x, t, c: net(x) * (t[:, None] / 50.0)  # noqa: E731  a fixed nonlinear "network"
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=f64)

    def ddpm(seed):
        return sampling.sample_ddpm(denoise_fn(den, s), x_T, s, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(ddpm(0), ddpm(0)) and not torch.equal(ddpm(0), ddpm(1))
    # steps = T is the full chain: same times, same draws, bitwise the same samples
    full = sampling.sample_ddpm(denoise_fn(den, s), x_T, s, steps=50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(full, ddpm(0))
    # eta = 0 DDIM uses no randomness: any generator gives the same samples and none is advanced
    g0, g1 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    state = g0.get_state()
    a = sampling.sample_ddim(denoise_fn(den, s), x_T, s, steps=10, generator=g0)
    b = sampling.sample_ddim(denoise_fn(den, s), x_T, s, steps=10, generator=g1)
    assert torch.equal(a, b) and torch.equal(g0.get_state(), state)
    c = sampling.sample_ddim(denoise_fn(den, s), x_T, s, steps=10, eta=0.5, generator=torch.Generator().manual_seed(0))
    d = sampling.sample_ddim(denoise_fn(den, s), x_T, s, steps=10, eta=0.5, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(c, d)


def test_loops_callback_t_start_no_grad():
    s = base.make_schedule("cosine", 100)
    net = nn.Linear(4, 4)
    seen_t = []

    def den(x, t, c):
        seen_t.append(int(t[0]))
        return net(x)

    calls = []
    x_T = torch.randn(2, 4)
    out = sampling.sample_ddim(denoise_fn(den, s), x_T, s, steps=10, t_start=60,
                           callback=lambda i, t, x, x0: calls.append((i, t, x, x0)))
    assert [i for i, *_ in calls] == list(range(10))
    assert [t for _, t, *_ in calls] == base.timesteps_ddim(100, 10, 60)[1:]
    assert seen_t == base.timesteps_ddim(100, 10, 60)[:-1] and seen_t[0] == 60
    seen_t.clear()
    sampling.sample_dpmpp_2m(denoise_fn(den, s), x_T, s, steps=5, spacing="noise-dense")
    assert seen_t == base.timesteps_dpm_solver(100, 5, spacing="noise-dense")[:-1] == [100, 96, 84, 64, 36]
    assert torch.equal(calls[-1][2], out) and torch.equal(out, calls[-1][3])  # the last step returns x0
    # gradients are off inside the loop, but the result is a normal tensor (no inference mode)
    assert not out.requires_grad and not out.is_inference() and out.dtype == torch.float32
    out = sampling.sample_ddpm(denoise_fn(den, s, clip_limit=0.5), x_T, s, steps=5)
    assert not out.requires_grad and out.abs().max().item() <= 0.5  # last step: mean = clipped x0, no noise


def test_sample_noise_generator():
    g = torch.Generator().manual_seed(7)
    a = base.sample_noise((3, 4), g, "cpu", torch.float32)
    assert torch.equal(a, torch.randn(3, 4, generator=torch.Generator().manual_seed(7)))


# ----------------------------------------------------------------------------------------------------------------
# end to end with the Gaussian oracle
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parametrisation,steps", [("v", None), ("eps", 50), ("x0", 7)])
def test_ddpm_exact_for_unit_covariance_data(parametrisation, steps):
    # For data N(mu, I), every marginal is q(x_t) = N(sqrt(ab_t) mu, I), and the true reverse kernel
    # q(x_prev | x_t) is Gaussian with the posterior mean and variance 1 - ab_t/ab_prev = the implied beta. So DDPM with
    # variance="beta", the oracle and x_T ~ q(x_T) samples q(x_{t_1}) *exactly*, for the full chain and for any stride,
    # where t_1 is the last time before 0. The last step adds no noise and returns E[x0 | x_{t_1}]
    # = (1 - ab) mu + sqrt(ab) x_{t_1}, whose law is N(mu, ab_{t_1} I): a closed-form reference with no discretisation
    # error, so the sample moments must match it to within sampling error alone (T = 200, cosine; all, 50, 7 jumps).
    s = base.make_schedule("cosine", 200)
    eye = torch.eye(3, dtype=f64)
    oracle = GaussianOracle(MU, eye, s)
    g = torch.Generator().manual_seed(11)
    x_T = s.alpha_bar[200].sqrt() * MU + torch.randn(N_SAMPLES, 3, generator=g, dtype=f64)
    out = sampling.sample_ddpm(denoise_fn(oracle.denoiser(parametrisation), s, parametrisation=parametrisation), x_T, s,
                           steps=steps, variance="beta", generator=g)
    t_1 = base.timesteps_ddpm(200, steps)[-2]
    assert_moments(out, MU, s.alpha_bar[t_1] * eye)


def test_oracle_sampler_laws_approach_data():
    # The reference laws used below, computed exactly by moment propagation, tend to the data law as steps grow:
    # DDPM (beta_tilde) and DDIM are first-order in the step size, so doubling the steps roughly halves the error.
    s = base.make_schedule("cosine", 1000)
    oracle = GaussianOracle(MU, SIGMA, s)

    def err(kind, steps):
        m, C = oracle.sampler_law(base.timesteps_ddim(1000, steps), kind)
        return (C - SIGMA).norm().item() / SIGMA.norm().item(), (m - MU).norm().item()

    for kind in ("ddpm", "ddim"):
        e50, e100, e200 = err(kind, 50)[0], err(kind, 100)[0], err(kind, 200)[0]
        assert 0.4 < e100 / e50 < 0.6 and 0.4 < e200 / e100 < 0.6, (kind, e50, e100, e200)
        assert err(kind, 1000)[0] < 0.01 and err(kind, 1000)[1] < 1e-3


@pytest.mark.parametrize("sampler,parametrisation,dtype", [
    ("ddpm", "v", f64), ("ddim", "v", torch.float32), ("ddim", "eps", f64), ("ddim", "x0", f64),
])
def test_oracle_samples_match_exact_sampler_law(sampler, parametrisation, dtype):
    # Correlated Gaussian data. With a finite number of steps neither DDPM (beta_tilde ignores Cov(x0 | x_t)) nor
    # DDIM (a first-order ODE solver) samples the data exactly; their exact output law is Gaussian and computed by
    # `sampler_law` from the paper formulas. Full DDPM at T = 200 and 50-step DDIM must match that law to within
    # sampling error, and that law is within a few percent of the data's (the remaining discretisation error).
    s = base.make_schedule("cosine", 200)
    oracle = GaussianOracle(MU, SIGMA, s)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(N_SAMPLES, 3, generator=g, dtype=dtype)
    den = oracle.denoiser(parametrisation)
    if sampler == "ddpm":
        out = sampling.sample_ddpm(denoise_fn(den, s, parametrisation=parametrisation), x_T, s, generator=g)
        m, C = oracle.sampler_law(base.timesteps_ddpm(200), "ddpm")
    else:
        out = sampling.sample_ddim(denoise_fn(den, s, parametrisation=parametrisation), x_T, s, steps=50, generator=g)
        m, C = oracle.sampler_law(base.timesteps_ddim(200, 50), "ddim")
    assert out.dtype == dtype
    assert_moments(out, m, C)
    assert (C - SIGMA).norm().item() < 0.05 * SIGMA.norm().item() and (m - MU).norm().item() < 0.01


def test_oracle_strided_ddpm_beta_tilde_and_ddim_eta1():
    # 50 of 200 steps with beta_tilde of the implied betas, and 50-step DDIM with eta = 1, are the same sampler
    # (eq. 16); both must match the exact law of that strided chain.
    s = base.make_schedule("cosine", 200)
    oracle = GaussianOracle(MU, SIGMA, s)
    m, C = oracle.sampler_law(base.timesteps_ddpm(200, 50), "ddpm")
    m1, C1 = oracle.sampler_law(base.timesteps_ddim(200, 50), "ddim", eta=1.0)
    torch.testing.assert_close((m, C), (m1, C1))
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(N_SAMPLES, 3, generator=g, dtype=f64)
    eps_fn = denoise_fn(oracle.denoiser("eps"), s, parametrisation="eps")
    assert_moments(sampling.sample_ddpm(eps_fn, x_T, s, steps=50, generator=g), m, C)
    assert_moments(sampling.sample_ddim(denoise_fn(oracle.denoiser("v"), s), x_T, s, steps=50, eta=1.0, generator=g), m, C)


# ----------------------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------------------
def _den(x, t, c):
    return torch.zeros_like(x)


@pytest.mark.parametrize("call", [
    lambda s, x: base.make_schedule("quadratic", 10),
    lambda s, x: base.make_schedule("cosine", 0),
    lambda s, x: base.make_schedule("linear", 10, beta_start=0.1, beta_end=0.01),
    lambda s, x: base.timesteps_ddim(10, 11),
    lambda s, x: base.timesteps_ddim(10, 0),
    lambda s, x: base.timesteps_ddpm(10, 5, t_start=11),
    lambda s, x: base.timesteps_ddpm(10, 6, t_start=5),
    lambda s, x: sampling.sample_ddim(denoise_fn(_den, s), x, s, steps=11),
    lambda s, x: sampling.sample_ddpm(denoise_fn(_den, s), x, s, steps=0),
    lambda s, x: sampling.sample_ddim(denoise_fn(_den, s), x, s, steps=5, eta=1.5),
    lambda s, x: sampling.sample_ddim(denoise_fn(_den, s, parametrisation="score"), x, s, steps=5),
    lambda s, x: base.ddim_step(x, 5, 5, x, x, s),
    lambda s, x: base.ddim_step(x, 5, 7, x, x, s),
    lambda s, x: base.ddpm_step(x, 3, 4, x, s),
    lambda s, x: base.ddpm_step(x, 3, 2, x, s, variance="learned"),
    lambda s, x: base.q_sample(x, 11, x, s),
    lambda s, x: base.q_sample(x, torch.tensor([-1, 2]), x, s),
    lambda s, x: base.to_x0_eps(x, x, 3, s, "score"),
    lambda s, x: base.diffusion_loss(x, x, x, 3, s, "v", "huber"),
    lambda s, x: base.diffusion_loss(x, x, x, 3, s, "v", "l2", min_snr_gamma=0.0),
    lambda s, x: base.clip_x0(x, -1.0),
    lambda s, x: base.classifier_free_guidance(_den, 1.0, null_class=-1),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s), x, s, steps=0),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s), x, s, steps=11),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s), x, s, steps=None),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s), x, s, steps=2.5),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s), x, s, steps=6, t_start=5),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s), x, s, steps=2, t_start=0),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s), x, s, steps=2, t_start=11),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s, parametrisation="score"), x, s, steps=2),
    lambda s, x: sampling.sample_dpmpp_2m(denoise_fn(_den, s, clip_limit=-1.0), x, s, steps=2),
    lambda s, x: base.timesteps_dpm_solver(10, 0),
    lambda s, x: base.dpmpp_2m_step(x, 5, 5, x, s),
    lambda s, x: base.dpmpp_2m_step(x, 5, 3, x, s, x0_prev=x),
    lambda s, x: base.dpmpp_2m_step(x, 5, 3, x, s, x0_prev=x, t_prev=5),
])
def test_bad_inputs_raise_one_line_value_errors(call):
    """The math's own checks: plain ValueErrors naming no flag (the config and command lines check first)."""
    s = base.make_schedule("cosine", 10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError) as info:
        call(s, x)
    assert "\n" not in str(info.value) and "--" not in str(info.value)
