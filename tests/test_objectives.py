"""Flow matching and EDM against the closed forms of Gaussian data, where the exact velocity field and the exact
denoiser are known, and through the one sampling loop in the variance-preserving coordinates it works in.

Data x0 ~ N(MU, S² I). For x_t = a x0 + s eps (any a, s): E[x0 | x_t] = MU + a S² / (a² S² + s²) (x_t - a MU) and
E[eps | x_t] = s / (a² S² + s²) (x_t - a MU).
"""
from __future__ import annotations

import math

import pytest
import torch

from model import base, sampling
from model.denoising import Denoiser
from model.objectives import EDM, EDM_P_MEAN, EDM_P_STD, EDM_TIME_SCALE, FLOW_TIME_SCALE, Flow
from model.sampling import SAMPLERS, SamplerSpec, make_grid

f64 = torch.float64
MU, S = 0.7, 0.5
T = 1000


def posterior_means(x_t: torch.Tensor, a, s) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x0 | x_t], E[eps | x_t]) for x_t = a x0 + s eps; a and s floats or (B, 1) tensors."""
    var = a**2 * S**2 + s**2
    r = x_t - a * MU
    return MU + a * S**2 / var * r, s / var * r


def exact_velocity(x_t: torch.Tensor, time: torch.Tensor, c=None) -> torch.Tensor:
    """The flow network that is right: u*(x_t, t) = E[eps - x0 | x_t] with x_t = (1 - t) x0 + t eps."""
    t = (time / FLOW_TIME_SCALE).to(x_t.dtype).reshape(-1, 1)
    x0, eps = posterior_means(x_t, 1 - t, t)
    return eps - x0


def exact_edm_network(edm: EDM):
    """The EDM network F that is right: F* = (D*(x; σ) - c_skip x) / c_out, read at its input c_in x and c_noise."""
    def net(x_in: torch.Tensor, c_noise: torch.Tensor, c=None) -> torch.Tensor:
        sigma = torch.exp(4 * c_noise.to(x_in.dtype) / EDM_TIME_SCALE).reshape(-1, 1)  # it embeds 1000 ln(σ) / 4
        c_skip, c_out, c_in, _ = edm.coefficients(sigma)
        x = x_in / c_in
        d, _ = posterior_means(x, 1.0, sigma)
        return (d - c_skip * x) / c_out

    return net


def vp_oracle(x: torch.Tensor, level: base.Level) -> torch.Tensor:
    """E[x0 | x] in the sampler's coordinates x = alpha x0 + sigma eps."""
    return posterior_means(x, level.alpha, level.sigma)[0]


def draw(level: base.Level, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = MU + S * torch.randn(n, 3, generator=g, dtype=f64)
    return level.alpha * x0 + level.sigma * torch.randn(n, 3, generator=g, dtype=f64)


# ----- flow matching ---------------------------------------------------------------------------------------------
def test_the_flow_table_reaches_pure_noise_at_t_1_with_the_flow_snr():
    flow = Flow(T)
    assert flow.table.level_at_step(T).ab == 0.0 and flow.table.level_at_step(0).is_data
    for k in (1, 250, 500, 999):
        t = k / T
        # through alpha_bar = 1 - 1e-6 at k = 1, sqrt(1 - alpha_bar) keeps about 10 of float64's 16 digits
        assert flow.table.level_at_step(k).lam == pytest.approx(math.log((1 - t) / t), rel=1e-9)
        assert Flow.time(flow.table.level_at_step(k)) == pytest.approx(t, rel=1e-9)


@pytest.mark.parametrize("k", [1, 100, 500, 900, 1000])
def test_the_exact_velocity_field_gives_the_exact_denoiser_at_every_level(k):
    """The wrapper maps the sampler's state to the flow's coordinates and the velocity back to (x0, eps): with u*, it
    must return E[x0 | x] and E[eps | x] of the sampler's own coordinates, pure noise (t = 1) included."""
    flow = Flow(T)
    level = flow.table.level_at_step(k)
    x = draw(level, 64, seed=k)
    x0, eps = Denoiser(exact_velocity, flow.table, "v", objective=flow)(x, level)
    want_x0, want_eps = posterior_means(x, level.alpha, level.sigma)
    torch.testing.assert_close(x0, want_x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps, want_eps, rtol=1e-10, atol=1e-10)


def test_the_flow_loss_is_velocity_regression_on_the_straight_path():
    """The network sees x_t = (1 - t) x0 + t eps at time 1000 t, and the loss is ||u - (eps - x0)||²."""
    seen = {}

    def zero(x_t, time, c):
        seen.update(x_t=x_t, time=time)
        return torch.zeros_like(x_t)

    g = torch.Generator().manual_seed(0)
    x0, eps, t = (torch.randn(5, 3, generator=g, dtype=f64), torch.randn(5, 3, generator=g, dtype=f64),
                  torch.rand(5, generator=g, dtype=f64))
    loss = Flow(T).loss(zero, x0, None, t, eps)
    torch.testing.assert_close(seen["x_t"], (1 - t[:, None]) * x0 + t[:, None] * eps)
    torch.testing.assert_close(seen["time"], FLOW_TIME_SCALE * t)
    torch.testing.assert_close(loss, (eps - x0).square().mean(1))


def test_the_exact_velocity_field_minimises_the_flow_loss():
    flow = Flow(T)
    g = torch.Generator().manual_seed(1)
    x0 = MU + S * torch.randn(200_000, 1, generator=g, dtype=f64)
    eps = torch.randn(200_000, 1, generator=g, dtype=f64)
    t = torch.sigmoid(torch.randn(200_000, generator=g, dtype=f64))

    def mean_loss(net):
        return float(flow.loss(net, x0, None, t, eps).mean())

    best = mean_loss(exact_velocity)
    for delta in (0.05, -0.05):
        assert mean_loss(lambda x, time, c: exact_velocity(x, time) + delta) > best + 0.5 * delta**2
        assert mean_loss(lambda x, time, c: exact_velocity(x, time) * (1 + delta)) > best


@pytest.mark.parametrize("m, s", [(0.0, 1.0), (0.5, 0.8)])
def test_flow_times_are_logit_normal_with_the_configured_mean_and_spread(m, s):
    from model.config import DiffusionConfig
    from model.objectives import from_config

    torch.manual_seed(0)
    t = from_config(DiffusionConfig(objective="flow", T=T, flow_logit_mean=m, flow_logit_std=s)).draw(50_000, "cpu")
    logit = torch.log(t) - torch.log1p(-t)
    assert float(logit.mean()) == pytest.approx(m, abs=0.02) and float(logit.std()) == pytest.approx(s, abs=0.02)


def test_flow_time_settings_are_refused_for_other_objectives_and_a_spread_must_be_positive():
    from model.config import DiffusionConfig
    from model.errors import UserError

    with pytest.raises(UserError, match="flow_logit_mean and flow_logit_std set the flow objective"):
        DiffusionConfig(objective="vp", flow_logit_mean=0.5)
    with pytest.raises(UserError, match="flow_logit_std must be > 0"):
        DiffusionConfig(objective="flow", flow_logit_std=0.0)


def test_euler_on_the_flow_table_is_euler_on_the_flow_ode():
    """Euler's step in the sampler's coordinates, read in the flow's, is x_next = x + (t_next - t) u (the sampler of
    rectified flow): the loop and the coordinate change add nothing."""
    flow = Flow(T)
    den = Denoiser(exact_velocity, flow.table, "v", objective=flow)
    levels = make_grid(flow.table, "uniform", 10)
    x = draw(levels[0], 16, seed=3)
    seen = []
    sampling.run(SAMPLERS["euler"], den, x, levels, {}, callback=lambda i, lv, x_i, x0: seen.append((lv, x_i)))
    x_flow = x / (levels[0].alpha + levels[0].sigma)
    for (lv, x_i), prev in zip(seen[:-1], levels[:-2]):
        t, t_next = Flow.time(prev), Flow.time(lv)
        x_flow = x_flow + (t_next - t) * exact_velocity(x_flow, torch.full((16,), FLOW_TIME_SCALE * t, dtype=f64))
        torch.testing.assert_close(x_i / (lv.alpha + lv.sigma), x_flow, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_draws_the_data_from_pure_noise_on_the_flow_table(name):
    """From t = 1 (alpha_bar = 0: the σ = ∞ start that the VP tables never reach) with the exact velocity field."""
    flow = Flow(T)
    den = Denoiser(exact_velocity, flow.table, "v", objective=flow)
    levels = make_grid(flow.table, "uniform" if name == "ddpm" else "karras", 100)
    x = sampling.run(SAMPLERS[name], den, torch.randn(4000, 3, generator=torch.Generator().manual_seed(5), dtype=f64),
                     levels, SamplerSpec(name).options(), generator=torch.Generator().manual_seed(6))
    assert float(x.mean()) == pytest.approx(MU, abs=0.03), name
    assert float(x.std()) == pytest.approx(S, rel=0.05), name


# ----- EDM ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_preconditioning_gives_unit_variance_input_and_target(sigma_data):
    """Karras et al. 2022, App. B.6: for data of std σ_d, c_in x and the training target (x0 - c_skip x) / c_out have
    unit variance at every σ, the reason for c_in, c_skip and c_out."""
    edm = EDM(T, sigma_data=sigma_data)
    g = torch.Generator().manual_seed(2)
    x0 = sigma_data * torch.randn(200_000, generator=g, dtype=f64)
    n = torch.randn(200_000, generator=g, dtype=f64)
    for sigma in (0.01, 0.3, 1.0, 5.0, 80.0):
        c_skip, c_out, c_in, c_noise = edm.coefficients(sigma)
        x = x0 + sigma * n
        assert float((c_in * x).std()) == pytest.approx(1.0, abs=0.01)
        assert float(((x0 - c_skip * x) / c_out).std()) == pytest.approx(1.0, abs=0.01)
        assert c_noise == pytest.approx(math.log(sigma) / 4)


def test_the_edm_loss_is_lambda_weighted_denoising_error():
    """λ(σ) ||D - x0||² with λ = (σ² + σ_d²) / (σ σ_d)² (their eq. 8 and Table 1), D read from the wrapper."""
    edm = EDM(T, sigma_data=0.5)
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(6, 3, generator=g, dtype=f64), torch.randn(6, 3, generator=g, dtype=f64)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 7.0, 60.0], dtype=f64)

    def net(x_in, c_noise, c):
        return torch.sin(3 * x_in) + c_noise.reshape(-1, 1)  # any network

    loss = edm.loss(net, x0, None, sigma, eps)
    s = sigma[:, None]
    d, _ = edm.denoised(net, x0 + s * eps, s, None)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss, lam * (d - x0).square().mean(1), rtol=1e-10, atol=0)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0, 2.0])
def test_edm_noise_levels_are_log_normal_relative_to_the_data_scale(sigma_data):
    """At the paper's σ_data = 0.5, ln σ ~ N(-1.2, 1.2²) exactly as in their Table 1; for other data scales the
    distribution of σ / σ_data is that one."""
    torch.manual_seed(0)
    log_sigma = torch.log(EDM(T, sigma_data=sigma_data).draw(50_000, "cpu"))
    assert float(log_sigma.mean()) == pytest.approx(EDM_P_MEAN + math.log(sigma_data / 0.5), abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(EDM_P_STD, abs=0.03)


@pytest.mark.parametrize("k", [1, 300, 1000])
def test_the_exact_edm_network_gives_the_exact_denoiser(k):
    edm = EDM(T, sigma_data=1.0)
    level = edm.table.level_at_step(k)
    x = draw(level, 64, seed=k)
    x0, eps = Denoiser(exact_edm_network(edm), edm.table, "v", objective=edm)(x, level)
    want_x0, want_eps = posterior_means(x, level.alpha, level.sigma)
    torch.testing.assert_close(x0, want_x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps, want_eps, rtol=1e-9, atol=1e-9)


def test_the_edm_table_spans_its_sampler_range_and_karras_gives_its_grid():
    """σ from 0.002 (k = 1) to 80 (k = T); the Karras grid on it is EDM's own sampling grid (ρ = 7)."""
    edm = EDM(T)
    assert edm.table.level_at_step(1).sigma_ve == pytest.approx(0.002, rel=1e-9)
    assert edm.table.level_at_step(T).sigma_ve == pytest.approx(80.0, rel=1e-9)
    sigmas = [lv.sigma_ve for lv in make_grid(edm.table, "karras", 18)]
    ramp = [i / 17 for i in range(18)]
    want = [(80 ** (1 / 7) + r * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for r in ramp]
    assert sigmas[:-1] == pytest.approx(want, rel=1e-9) and sigmas[-1] == 0.0


def heun_error_on_edm(steps: int) -> float:
    """Max error of Heun's state at the last noisy level of EDM's grid against the exact probability-flow ODE, which
    for Gaussian data scales x̃ - MU by sqrt((S² + σ²) / (S² + σ_start²)) (x̃ = x / alpha)."""
    edm = EDM(T)
    den = Denoiser(exact_edm_network(edm), edm.table, "v", objective=edm)
    levels = make_grid(edm.table, "karras", steps)
    x_T = draw(levels[0], 64, seed=8)
    seen = {}
    sampling.run(SAMPLERS["heun"], den, x_T, levels, {}, callback=lambda i, lv, x, x0: seen.__setitem__(i, (lv, x)))
    level, x = seen[steps - 2]
    scale = math.sqrt((S**2 + level.sigma_ve**2) / (S**2 + levels[0].sigma_ve**2))
    exact = MU + (x_T / levels[0].alpha - MU) * scale
    return float((x / level.alpha - exact).abs().max())


def test_heun_through_the_edm_wrapper_converges_at_second_order():
    """The EDM wrapper's (x0, eps) drive Heun on EDM's own grid (σ 80 to 0.002, ρ = 7) at its registered order."""
    e1, e2 = heun_error_on_edm(40), heun_error_on_edm(80)
    assert abs(math.log2(e1 / e2) - 2) < 0.35, (e1, e2)
