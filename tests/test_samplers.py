"""The continuous-time core: the schedule between its steps, the grids, the sampler registry and the one loop.

Every sampler is checked against k-diffusion's implementation (`k_diffusion.sampling`, Crowson's reference code of
Karras et al. 2022) on an exact Gaussian denoiser, and its order of convergence is measured against the exact
probability-flow ODE solution, which is known in closed form for Gaussian data.
"""
from __future__ import annotations

import math

import pytest
import torch

from k_diffusion_ref import k_diffusion_sampling
from model import base, sampling
from model.errors import UserError
from model.sampling import GRIDS, SAMPLERS, SamplerSpec, make_grid

f64 = torch.float64
MU, S = 0.7, 0.5  # data x0 ~ N(MU, S^2 I)
SOLVERS = [name for name, info in SAMPLERS.items() if not info.stochastic]  # deterministic (DDIM with eta = 0)


@pytest.fixture(scope="module")
def cosine() -> base.Schedule:
    return base.make_schedule("cosine", 1000)


def exact_denoiser(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x0 + σ z = x_ve] for x0 ~ N(MU, S^2 I): MU + S^2 / (S^2 + σ^2) (x_ve - MU)."""
    return MU + S**2 / (S**2 + sigma**2) * (x_ve - MU)


def oracle(x: torch.Tensor, level: base.Level) -> tuple[torch.Tensor, torch.Tensor]:
    """`denoise(x, level)` of the exact denoiser, in the variance-preserving x = alpha (x0 + σ z)."""
    x0 = exact_denoiser(x / level.alpha, level.sigma_ve)
    return x0, (x - level.alpha * x0) / level.sigma


def exact_flow(x_ve: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The probability-flow ODE dx/dσ = (x - D(x; σ)) / σ solved exactly for Gaussian data:
    x(σ) - MU = (x(σ_from) - MU) sqrt((S^2 + σ^2) / (S^2 + σ_from^2))."""
    return MU + (x_ve - MU) * math.sqrt((S**2 + sigma_to**2) / (S**2 + sigma_from**2))


def start(level: base.Level, n: int = 64, seed: int = 0) -> torch.Tensor:
    x_ve = MU + math.sqrt(S**2 + level.sigma_ve**2) * torch.randn(n, 3, generator=torch.Generator().manual_seed(seed),
                                                                  dtype=f64)
    return level.alpha * x_ve


# ----- the schedule in continuous time -----------------------------------------------------------------------
def test_the_table_is_reproduced_exactly_at_its_own_times(cosine):
    for k in range(cosine.T + 1):
        assert cosine.ab_at(k / cosine.T) == cosine._values[k]
        assert cosine.net_time(k / cosine.T) == float(k)
        assert cosine.level_at_step(k).ab == cosine.level(k / cosine.T).ab


def test_between_steps_the_log_snr_is_interpolated_and_inverted(cosine):
    for k in (0, 1, 17, 500, 999):
        lo, hi = cosine.ab_at(k / 1000), cosine.ab_at((k + 1) / 1000)
        mid = cosine.ab_at((k + 0.5) / 1000)
        assert hi < mid < lo
        if k:  # log-SNR linear between two steps: the midpoint's log-SNR is the mean of the ends'
            assert base._log_snr(mid) == pytest.approx((base._log_snr(lo) + base._log_snr(hi)) / 2, rel=1e-12)
    for t in (0.0013, 0.25, 0.5123, 0.9999):
        assert cosine.t_at_log_snr(base._log_snr(cosine.ab_at(t))) == pytest.approx(t, abs=1e-12)
        assert cosine.net_time(t) == pytest.approx(1000 * t)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cosine.ab_at(1.5)


# ----- grids ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", list(GRIDS))
def test_every_grid_descends_from_the_start_to_the_data(cosine, spacing):
    for steps, k_start in ((1, 1000), (7, 1000), (25, 600)):
        levels = make_grid(cosine, spacing, steps, k_start)
        assert len(levels) == steps + 1
        assert levels[0].ab == cosine.level_at_step(k_start).ab and levels[-1].is_data
        assert all(a.ab < b.ab for a, b in zip(levels[:-1], levels[1:]))


def test_the_table_grids_visit_the_table_steps_of_the_old_loops(cosine):
    for spacing in ("uniform", "noise-dense"):
        steps = [lv.net_time for lv in make_grid(cosine, spacing, 25)]
        assert steps == [float(k) for k in base._spaced(1000, 25, None, spacing)]


def test_the_karras_grid_is_eq_5_of_karras_et_al_and_k_diffusions(cosine):
    get_sigmas_karras = k_diffusion_sampling().get_sigmas_karras
    levels = make_grid(cosine, "karras", 10)
    sigmas = torch.tensor([lv.sigma_ve for lv in levels], dtype=f64)
    s_max, s_min = cosine.level_at_step(1000).sigma_ve, cosine.level_at_step(1).sigma_ve
    ramp = torch.linspace(0, 1, 10, dtype=f64)
    eq5 = (s_max ** (1 / 7) + ramp * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
    torch.testing.assert_close(sigmas[:-1], eq5, rtol=1e-10, atol=0)
    theirs = get_sigmas_karras(10, s_min, s_max, rho=7.0, device="cpu").to(f64)  # built in float32 there
    torch.testing.assert_close(sigmas, theirs, rtol=1e-5, atol=0)
    assert sigmas[-1] == 0


def test_the_logsnr_grid_spaces_the_log_snr_evenly(cosine):
    lams = [lv.lam for lv in make_grid(cosine, "logsnr", 8)[:-1]]
    gaps = [a - b for a, b in zip(lams[1:], lams[:-1])]
    assert max(gaps) == pytest.approx(min(gaps), rel=1e-9) and min(gaps) > 0


# ----- parity with k-diffusion ---------------------------------------------------------------------------------
K_DIFFUSION = {"euler": "sample_euler", "heun": "sample_heun", "dpmpp_2m": "sample_dpmpp_2m"}


@pytest.mark.parametrize("name", list(K_DIFFUSION))
@pytest.mark.parametrize("spacing", ["karras", "uniform", "logsnr"])
def test_samplers_match_k_diffusion_on_the_gaussian_oracle(cosine, name, spacing):
    """k-diffusion integrates in the variance-exploding view x̃ = x / alpha with the same σ grid; the two must meet."""
    kd = k_diffusion_sampling()
    levels = make_grid(cosine, spacing, 12)
    x_T = start(levels[0])
    ours = sampling.run(SAMPLERS[name], oracle, x_T, levels, {})
    sigmas = torch.tensor([lv.sigma_ve for lv in levels], dtype=f64)
    model = lambda x, sigma, **_: exact_denoiser(x, float(sigma.reshape(-1)[0]))  # noqa: E731
    theirs = getattr(kd, K_DIFFUSION[name])(model, x_T / levels[0].alpha, sigmas, disable=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("s_noise", [1.0, 1.1])
def test_the_sde_solver_matches_k_diffusion_given_the_same_noise(cosine, s_noise):
    """DPM-Solver++(2M) SDE (k-diffusion's sample_dpmpp_2m_sde, eta 1, midpoint, its s_noise): both draw one N(0, I)
    per step from generators seeded alike, so the trajectories must meet, with the noise scaled as well."""
    kd = k_diffusion_sampling()
    levels = make_grid(cosine, "karras", 12)
    x_T = start(levels[0])
    ours = sampling.run(SAMPLERS["dpmpp_2m_sde"], oracle, x_T, levels, {"s_noise": s_noise},
                        generator=torch.Generator().manual_seed(3))
    theirs_gen = torch.Generator().manual_seed(3)
    noise = lambda sigma, sigma_next: torch.randn(x_T.shape, generator=theirs_gen, dtype=f64)  # noqa: E731
    sigmas = torch.tensor([lv.sigma_ve for lv in levels], dtype=f64)
    model = lambda x, sigma, **_: exact_denoiser(x, float(sigma.reshape(-1)[0]))  # noqa: E731
    theirs = kd.sample_dpmpp_2m_sde(model, x_T / levels[0].alpha, sigmas, disable=True, noise_sampler=noise,
                                    s_noise=s_noise)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    again = sampling.run(SAMPLERS["dpmpp_2m_sde"], oracle, x_T, levels, {"s_noise": s_noise},
                         generator=torch.Generator().manual_seed(4))
    assert (again - ours).abs().max() > 1e-3  # the noise matters


@pytest.mark.parametrize("name,options", [("ddpm", {}), ("ddim", {"eta": 0.6}), ("dpmpp_2m_sde", {})])
def test_s_noise_scales_only_the_fresh_noise_of_a_step(cosine, name, options):
    """One step with the same draw is affine in s_noise: x(s) = x(0) + s (x(1) - x(0)), the deterministic part x(0)
    untouched; only the samplers that draw noise take an s_noise."""
    cur, nxt = make_grid(cosine, "karras", 12)[3:5]
    x = start(cur)

    def step(s: float) -> torch.Tensor:
        return SAMPLERS[name].step(oracle, x, cur, nxt, {}, generator=torch.Generator().manual_seed(2),
                                   s_noise=s, **options)[0]

    noise_part = step(1.0) - step(0.0)
    assert noise_part.abs().max() > 1e-2
    torch.testing.assert_close(step(1.3), step(0.0) + 1.3 * noise_part, rtol=1e-9, atol=1e-9)
    assert {n for n, info in SAMPLERS.items() if "s_noise" in info.options} == {"ddpm", "ddim", "dpmpp_2m_sde"}


def test_ddim_is_euler_on_the_same_grid(cosine):
    """DDIM with eta 0 is Euler's method on the ODE in (σ, x / alpha) (Song et al. 2021, Sec. 4.3; Karras et al.)."""
    levels = make_grid(cosine, "karras", 9)
    x_T = start(levels[0])
    a = sampling.run(SAMPLERS["ddim"], oracle, x_T, levels, {"eta": 0.0})
    b = sampling.run(SAMPLERS["euler"], oracle, x_T, levels, {})
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ----- convergence order ---------------------------------------------------------------------------------------
def error_before_the_data(cosine, name: str, steps: int) -> float:
    """Max error of the state at the last noisy level against the exact ODE solution there (the final jump into
    the data returns the denoiser's x0 for every sampler, which is not an ODE step)."""
    levels = make_grid(cosine, "karras", steps)
    x_T = start(levels[0], seed=1)
    seen = {}
    sampling.run(SAMPLERS[name], oracle, x_T, levels, SamplerSpec(name).options(),
                 callback=lambda i, lv, x, x0: seen.__setitem__(i, (lv, x)))
    level, x = seen[steps - 2]
    exact = exact_flow(x_T / levels[0].alpha, levels[0].sigma_ve, level.sigma_ve)
    return float((x / level.alpha - exact).abs().max())


@pytest.mark.parametrize("name", SOLVERS)
def test_each_solver_converges_at_its_registered_order(cosine, name):
    # σ spans 3e-3 to 160 on the cosine table: the asymptotic rate shows from about 80 steps
    e1, e2 = error_before_the_data(cosine, name, 80), error_before_the_data(cosine, name, 160)
    measured = math.log2(e1 / e2)
    assert abs(measured - SAMPLERS[name].order) < 0.35, (name, e1, e2, measured)


# ----- the loop --------------------------------------------------------------------------------------------------
def test_resampling_a_multistep_solver_is_refused(cosine):
    with pytest.raises(ValueError, match="resampl"):
        sampling.run(SAMPLERS["dpmpp_2m"], oracle, start(cosine.level_at_step(1000)), make_grid(cosine, "uniform", 4),
                     {}, resample=2)


def test_heun_calls_the_network_twice_per_step_but_once_into_the_data(cosine):
    calls = []

    def counting(x, level):
        calls.append(level.t)
        return oracle(x, level)

    sampling.run(SAMPLERS["heun"], counting, start(cosine.level_at_step(1000)), make_grid(cosine, "karras", 5), {})
    assert len(calls) == 2 * 5 - 1 and SAMPLERS["heun"].evals_per_step == 2


def test_the_guidance_interval_guides_only_inside_it(cosine):
    """With an interval, the network sees a doubled (guided) batch only at levels with σ in (lo, hi]."""
    from model.denoising import Denoiser

    doubled = []

    def net(x, t, c):
        doubled.append(len(x) == 8)
        return torch.zeros_like(x)

    den = Denoiser(net, cosine, "v", num_classes=3)
    levels = make_grid(cosine, "uniform", 10)
    spec = SamplerSpec("ddim", 10, guidance=2.0, guidance_interval=(0.5, 5.0))
    den.sample(torch.zeros(4, 3, dtype=f64), torch.tensor([0, 1, 2, 0]), spec)
    assert doubled == [0.5 < lv.sigma_ve <= 5.0 for lv in levels[:-1]] and any(doubled) and not all(doubled)


# ----- the spec --------------------------------------------------------------------------------------------------
def test_the_spec_takes_its_defaults_from_the_config_and_overrides_where_given():
    from model.config import DiffusionConfig

    diff = DiffusionConfig(sampler="ddim", sample_steps=25, sample_spacing="noise-dense", clip_limit=2.0)
    spec = SamplerSpec.from_config(diff)
    assert (spec.sampler, spec.steps, spec.spacing, spec.clip_limit) == ("ddim", 25, "noise-dense", 2.0)
    assert SamplerSpec.from_config(diff, sampler="ddpm").steps is None  # DDPM: every step unless told
    spec = SamplerSpec.from_config(diff, sampler="heun", steps=None, spacing="karras", guidance=3.0)
    assert (spec.sampler, spec.steps, spec.spacing, spec.guidance) == ("heun", 25, "karras", 3.0)
    assert spec.describe() == "Heun 25 steps, karras"
    noisy = DiffusionConfig(sampler="dpmpp_2m_sde", sample_steps=10, s_noise=1.1)
    assert SamplerSpec.from_config(noisy).s_noise == 1.1  # the config's noise scale, unless overridden
    assert SamplerSpec.from_config(noisy, s_noise=1.2).options() == {"s_noise": 1.2}
    assert SamplerSpec.from_config(noisy).describe() == "DPM-Solver++(2M) SDE 10 steps (s_noise 1.1)"
    assert SamplerSpec.from_config(diff, s_noise=1.1).describe() == "DDIM 25 steps, noise-dense (eta 0, s_noise 1.1)"
    assert SamplerSpec.from_config(noisy, guidance_interval=(3.0, math.inf)).describe() == \
        "DPM-Solver++(2M) SDE 10 steps (s_noise 1.1, guidance for σ in (3, inf])"


@pytest.mark.parametrize("kwargs,needle", [(dict(sampler="plms"), "unknown sampler"),
                                           (dict(spacing="cubic"), "unknown timestep spacing"),
                                           (dict(steps=0), "steps"), (dict(eta=1.5), "eta"),
                                           (dict(clip_limit=0.0), "clip_limit"),
                                           (dict(s_noise=0.0), "s_noise"), (dict(s_noise=math.inf), "s_noise"),
                                           (dict(guidance_interval=(2.0, 1.0)), "guidance interval")])
def test_bad_specs_are_one_line_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle) as err:
        SamplerSpec(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_registered_sampler_draws_the_data_distribution(cosine, name):
    """From the marginal at step 900 (σ = 6.4; at T the clipped cosine table has σ = 2e4, where first-order solvers
    need hundreds of steps) with the exact denoiser, every sampler, stochastic ones included, ends at N(MU, S^2 I)
    within 5% of the scale (first-order ones land about 2-3% low at 100 steps)."""
    levels = make_grid(cosine, "karras", 100, 900)
    x = sampling.run(SAMPLERS[name], oracle, start(levels[0], n=4000, seed=5), levels, SamplerSpec(name).options(),
                     generator=torch.Generator().manual_seed(6))
    assert float(x.mean()) == pytest.approx(MU, abs=0.03), name
    assert float(x.std()) == pytest.approx(S, rel=0.05), name
