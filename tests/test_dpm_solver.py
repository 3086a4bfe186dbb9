"""DPM-Solver++(2M) (model.sampling.sample_dpmpp_2m) against closed forms, DDIM and the paper's update.

The reference is the probability-flow ODE for isotropic Gaussian data x0 ~ N(mu, s^2 I), whose exact denoiser is
`GaussianOracle` (test_base.py) and whose ODE flow is closed form. With y = x / alpha and
rho = sigma / alpha = e^-lambda (alpha = sqrt(ab), sigma = sqrt(1 - ab)), the PF-ODE is
dy/drho = eps_hat = (y - x0_hat) / rho (Song et al. 2021, eq. 14), and the oracle gives
x0_hat = mu + s^2 / (s^2 + rho^2) (y - mu), hence

    d(y - mu)/drho = (y - mu) rho / (s^2 + rho^2)   =>   y_t - mu = (y_u - mu) sqrt(s^2 + rho_t^2) / sqrt(s^2 + rho_u^2)

from any start u to any t; at t = 0 (rho = 0): x0 = mu + s (x_u - alpha_u mu) / sqrt(alpha_u^2 s^2 + sigma_u^2).
Both sides of every comparison are exact at the discrete times, so the only error measured is the solver's.
"""
from __future__ import annotations

import math

import pytest
import torch

from model import base, sampling
from wrap import denoise_fn
from test_base import GaussianOracle

f64 = torch.float64
T = 1000
MU = torch.tensor([0.5, -1.0, 0.25], dtype=f64)
S = 0.5  # data std: small enough that x0_hat changes a lot along the trajectory (a hard ODE for the solvers)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


@pytest.fixture(scope="module")
def cosine():
    return base.make_schedule("cosine", T)


@pytest.fixture(scope="module")
def oracle(cosine):
    return GaussianOracle(MU, S**2 * torch.eye(3, dtype=f64), cosine)


def pf_ode_exact(x_u, u, t, schedule):
    """The exact PF-ODE solution at time t from x_u at time u > t, for data N(MU, S^2 I) (module docstring)."""
    ab = schedule.alpha_bar

    def rho2(k):
        return (1 - ab[k]) / ab[k]

    y_t = MU + (x_u / ab[u].sqrt() - MU) * ((S**2 + rho2(t)) / (S**2 + rho2(u))).sqrt()
    return ab[t].sqrt() * y_t  # (B, d)


def states(sampler, den, x, schedule, parametrisation="v", **kw):
    """{t: x_t} after every step of a sample loop, from its callback, and the final sample."""
    seen = {}
    out = sampler(denoise_fn(den, schedule, parametrisation), x, schedule,
                  callback=lambda i, t, x_t, x0: seen.__setitem__(t, x_t), **kw)
    return seen, out


def x_noise(n=64, seed=0, dtype=f64):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def max_err(a, b):
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------------------------------
# (a) accuracy against the exact PF-ODE flow
# ----------------------------------------------------------------------------------------------------------------
def test_exact_flow_formula_is_the_oracle_ode(cosine, oracle):
    # Guard on the reference itself: the closed-form flow must be the ODE that DDIM discretises. A DDIM run with one
    # step per t over [600 -> 300] lands on it up to its first-order error (measured 5.9e-4, halved steps: x 2.00).
    x_u = x_noise(8)
    seen, _ = states(sampling.sample_ddim, oracle.denoiser("v"), x_u, cosine, steps=600, t_start=600)
    err = max_err(seen[300], pf_ode_exact(x_u, 600, 300, cosine))
    assert err < 2e-3
    seen2, _ = states(sampling.sample_ddim, oracle.denoiser("v"), x_u, cosine, steps=300, t_start=600)
    assert 1.8 < max_err(seen2[300], pf_ode_exact(x_u, 600, 300, cosine)) / err < 2.2  # DDIM is first order


def test_second_order_on_the_pf_ode(cosine, oracle):
    # Order of convergence measured on the ODE segment t = 800 -> 400 (a time on every grid below). From t_start = 800
    # the lambda-steps all shrink in proportion to 1 / steps; two places where they do not are kept out of this
    # measurement: the first step from T (the clipped beta_T = 0.999 of the cosine schedule is a lambda jump of 3.45
    # in the last index) and the last steps to t = 0 (lambda -> +inf, see the next test).
    # Measured: DPM-Solver++ 1.98e-2, 5.15e-3, 1.31e-3 (ratios 3.85, 3.93); DDIM 5.94e-2, 2.99e-2, 1.50e-2 (1.99).
    x_u = x_noise()
    exact = pf_ode_exact(x_u, 800, 400, cosine)
    err = {}
    for name, sampler in [("dpm", sampling.sample_dpmpp_2m), ("ddim", sampling.sample_ddim)]:
        for steps in (8, 16, 32):
            seen, _ = states(sampler, oracle.denoiser("v"), x_u, cosine, steps=steps, t_start=800)
            err[name, steps] = max_err(seen[400], exact)
    for steps in (8, 16):
        assert 3.5 < err["dpm", steps] / err["dpm", 2 * steps] < 4.5, err  # order 2: halving h quarters the error
        assert 1.8 < err["ddim", steps] / err["ddim", 2 * steps] < 2.2, err  # order 1
    for steps in (8, 16, 32):
        assert err["dpm", steps] < err["ddim", steps] / 2.5, err


def test_final_sample_matches_exact_pf_ode_solution(cosine, oracle):
    # From pure noise at T to t = 0: the sample must approach the closed-form ODE solution, DPM-Solver++ much faster
    # than DDIM. Measured (max abs error over 64 samples):
    #   steps       5        10       20       100
    #   DPM++    3.35e-1  7.72e-2  4.70e-3  6.47e-4
    #   DDIM     4.35e-1  2.30e-1  1.19e-1  2.48e-2   (ratio ~1.9 per doubling: first order)
    # DPM-Solver++'s ratio per doubling is not a clean 4 here (4.3, 16, 1.8): with time-uniform steps the last
    # lambda-steps do not shrink (sigma_t^2 ~ t near t = 0, so lambda_{2k} - lambda_k -> log(2)/2, and the final
    # step to lambda = +inf is first order, x_0 = x0_hat(x_{t_1})), and error terms of opposite signs cross.
    x_T = x_noise()
    exact = pf_ode_exact(x_T, T, 0, cosine)
    den = oracle.denoiser("v")
    fn = denoise_fn(den, cosine)
    dpm = {n: max_err(sampling.sample_dpmpp_2m(fn, x_T, cosine, steps=n), exact) for n in (5, 10, 20, 100)}
    ddim = {n: max_err(sampling.sample_ddim(fn, x_T, cosine, steps=n), exact) for n in (5, 10, 20, 100)}
    assert dpm[5] < ddim[5]
    assert dpm[10] < ddim[10] / 2.5 and dpm[20] < ddim[20] / 10, (dpm, ddim)
    assert dpm[100] < 2e-3 and ddim[100] < 3e-2, (dpm, ddim)
    for n in (5, 10):
        assert 1.8 < ddim[n] / ddim[2 * n] < 2.1, ddim


# ----------------------------------------------------------------------------------------------------------------
# (b) the step itself: first order = DDIM, second order = Lu et al. Alg. 2
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2])
def test_one_and_two_steps_equal_ddim(cosine, oracle, steps):
    # 1 step: both return x0_hat(x_T). 2 steps: the first step is first order (no previous x0) and the last step to
    # t = 0 is first order too, so DPM-Solver++ and DDIM agree; only rounding differs (different algebraic forms).
    x_T = x_noise()
    a = sampling.sample_dpmpp_2m(denoise_fn(oracle.denoiser("v"), cosine), x_T, cosine, steps=steps)
    b = sampling.sample_ddim(denoise_fn(oracle.denoiser("v"), cosine), x_T, cosine, steps=steps)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_first_step_is_ddim_then_second_order(cosine, oracle):
    x_T = x_noise()
    dpm, _ = states(sampling.sample_dpmpp_2m, oracle.denoiser("v"), x_T, cosine, steps=10)
    ddim, _ = states(sampling.sample_ddim, oracle.denoiser("v"), x_T, cosine, steps=10)
    torch.testing.assert_close(dpm[900], ddim[900], rtol=0, atol=1e-12)
    # from the second step on the multistep correction acts, and brings each state closer to the exact flow
    # (measured at t = 800 / 500 / 100: DPM-Solver++ 1.84e-2 / 2.61e-2 / 6.6e-3, DDIM 1.93e-2 / 5.31e-2 / 1.62e-1)
    for t in (800, 500, 100):
        exact = pf_ode_exact(x_T, T, t, cosine)
        assert max_err(dpm[t], ddim[t]) > 1e-4 and max_err(dpm[t], exact) < max_err(ddim[t], exact)
    # with 3 steps the middle step is second order, so the samples differ
    a = sampling.sample_dpmpp_2m(denoise_fn(oracle.denoiser("v"), cosine), x_T, cosine, steps=3)
    b = sampling.sample_ddim(denoise_fn(oracle.denoiser("v"), cosine), x_T, cosine, steps=3)
    assert max_err(a, b) > 1e-3


def test_step_matches_paper_update(cosine):
    # Lu et al. 2022, Alg. 2, written out from the paper with lambda = log_snr / 2 (independent of alpha_sigma_lambda):
    # x_next = sigma_next / sigma_t x_t - alpha_next (exp(-h) - 1) D, D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev,
    # h = lambda_next - lambda_t, r = (lambda_t - lambda_prev) / h. Per-sample times, one of them landing on t = 0.
    g = torch.Generator().manual_seed(1)
    x_t, x0, x0_prev = (torch.randn(3, 2, 5, generator=g, dtype=f64) for _ in range(3))
    t_prev, t, t_next = torch.tensor([700, 450, 40]), torch.tensor([600, 300, 20]), torch.tensor([550, 123, 0])
    ab, lam = cosine.alpha_bar, cosine.log_snr / 2
    out = base.dpmpp_2m_step(x_t, t, t_next, x0, cosine, x0_prev=x0_prev, t_prev=t_prev)
    first = base.dpmpp_2m_step(x_t, t, t_next, x0, cosine)
    for b in range(2):
        h = lam[t_next[b]] - lam[t[b]]
        r = (lam[t[b]] - lam[t_prev[b]]) / h
        D = (1 + 1 / (2 * r)) * x0[b] - 1 / (2 * r) * x0_prev[b]
        c_x, c_d = ((1 - ab[t_next[b]]) / (1 - ab[t[b]])).sqrt(), -ab[t_next[b]].sqrt() * (torch.exp(-h) - 1)
        torch.testing.assert_close(out[b], c_x * x_t[b] + c_d * D, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(first[b], c_x * x_t[b] + c_d * x0[b], rtol=1e-12, atol=1e-12)
    assert torch.equal(out[2], x0[2]) and torch.equal(first[2], x0[2])  # t_next = 0: x0 exactly, first order
    assert torch.equal(base.dpmpp_2m_step(x_t, 5, 0, x0, cosine, x0_prev=x0_prev, t_prev=9), x0)
    # alpha_sigma_lambda: float64, (B, 1, 1), lambda = +inf at t = 0
    a, s, lm = base.alpha_sigma_lambda(cosine, torch.tensor([0, 1, 1000]), x_t.float())
    assert a.dtype == f64 and a.shape == (3, 1, 1)
    torch.testing.assert_close((a**2 + s**2).flatten(), torch.ones(3, dtype=f64), rtol=0, atol=1e-15)
    assert lm[0].item() == math.inf and torch.allclose(lm[1:].flatten(), lam[[1, 1000]])


# ----------------------------------------------------------------------------------------------------------------
# (c) parametrisations, (d) determinism, t_start, clip_limit, dtype
# ----------------------------------------------------------------------------------------------------------------
def test_every_parametrisation_gives_the_same_trajectory(cosine, oracle):
    # The oracle answers in eps, x0 or v; predict_x0_eps turns each into the same x0, so every state along the way
    # agrees. The eps form divides by sqrt(ab_T) = 5e-5 at t = T, which scales rounding by 2e4: tolerance 1e-10
    # (measured 2.9e-13).
    x_T = x_noise(16)
    runs = {p: states(sampling.sample_dpmpp_2m, oracle.denoiser(p), x_T, cosine, steps=12, parametrisation=p)
            for p in ("eps", "x0", "v")}
    assert list(runs["v"][0]) == base.timesteps_dpm_solver(T, 12)[1:]
    for p in ("eps", "x0"):
        for t, x_t in runs["v"][0].items():
            torch.testing.assert_close(runs[p][0][t], x_t, rtol=0, atol=1e-10)


def test_deterministic_dtype_and_last_step_returns_x0(cosine, oracle):
    x_T = x_noise(dtype=torch.float32)
    calls = []
    a = sampling.sample_dpmpp_2m(denoise_fn(oracle.denoiser("v"), cosine), x_T, cosine, steps=7,
                             callback=lambda i, t, x, x0: calls.append((i, t, x, x0)))
    b = sampling.sample_dpmpp_2m(denoise_fn(oracle.denoiser("v"), cosine), x_T, cosine, steps=7)
    assert torch.equal(a, b) and a.dtype == torch.float32 and not a.requires_grad
    assert [i for i, *_ in calls] == list(range(7)) and calls[-1][1] == 0
    assert torch.equal(calls[-1][2], a) and torch.equal(a, calls[-1][3])  # x_0 is the last x0 prediction
    # float32 data with float64 coefficients: close to the float64 run (measured 2.4e-7)
    c = sampling.sample_dpmpp_2m(denoise_fn(oracle.denoiser("v"), cosine), x_T.double(), cosine, steps=7)
    assert max_err(a.double(), c) < 1e-5


def test_t_start_starts_from_the_given_x_t(cosine, oracle):
    # Reimagining: x_t at t_start = 600 (any x_t; here noised data), 40 steps from there. The denoiser is first called
    # at t = 600 and the sample approaches the exact ODE solution from (x_600, 600), not from T.
    g = torch.Generator().manual_seed(2)
    x0 = MU + S * torch.randn(64, 3, generator=g, dtype=f64)
    x_t = base.q_sample(x0, 600, torch.randn(64, 3, generator=g, dtype=f64), cosine)
    seen_t = []
    den = oracle.denoiser("v")
    out = sampling.sample_dpmpp_2m(denoise_fn(lambda x, t, c: seen_t.append(int(t[0])) or den(x, t, c), cosine), x_t,
                               cosine, steps=40, t_start=600)
    assert seen_t == base.timesteps_dpm_solver(T, 40, 600)[:-1] and seen_t[0] == 600
    assert max_err(out, pf_ode_exact(x_t, 600, 0, cosine)) < 5e-3  # measured 1.8e-3 (3.3e-2 for 40-step DDIM)


def test_clip_limit(cosine):
    # A denoiser whose x0 prediction overshoots (x0 parametrisation, 3 x_t): each x0 is clamped to [-1, 1], so the
    # final sample, which is the last x0, lies in [-1, 1]; an unreachable limit is the same as no clipping.
    x_T = 2 * x_noise()

    def den(x_t, t, c):
        return 3 * x_t

    clipped = sampling.sample_dpmpp_2m(denoise_fn(den, cosine, parametrisation="x0", clip_limit=1.0), x_T, cosine,
                                   steps=10)
    free = sampling.sample_dpmpp_2m(denoise_fn(den, cosine, parametrisation="x0"), x_T, cosine, steps=10)
    assert clipped.abs().max().item() <= 1.0 and (clipped.abs() == 1.0).any()
    assert free.abs().max().item() > 1.5
    huge = denoise_fn(den, cosine, parametrisation="x0", clip_limit=1e9)
    assert torch.equal(sampling.sample_dpmpp_2m(huge, x_T, cosine, steps=10), free)


# ----------------------------------------------------------------------------------------------------------------
# (e) bad arguments
# ----------------------------------------------------------------------------------------------------------------
# the bad-argument cases of sample_dpmpp_2m, timesteps_dpm_solver and dpmpp_2m_step are in
# test_base.py's test_bad_inputs_raise_user_error, with those of every other function of model/base.py
