"""Our samplers against diffusers' schedulers, driven by the same tiny v-prediction network, to float precision.

diffusers is a dev-only dependency (pyproject `dev` extra); without it this module is skipped.

Index mapping (checked below, not assumed): diffusers' training timestep k in {0, ..., T-1} is our t = k + 1, i.e. its
`alphas_cumprod[k]` is our `alpha_bar[k + 1]` and its `betas[k]` our beta_{k+1}; its "previous timestep" -1 (the
`final_alpha_cumprod` of `set_alpha_to_one=True`, `one` in DDPM, sigma = 0 in DPM-Solver with
`final_sigmas_type="zero"`) is our t = 0 with alpha_bar_0 = 1. Its `timestep_spacing="trailing"` gives our
`_spaced` grid minus one whenever T / steps needs no rounding of exact halves (numpy rounds halves to even, we round
them up); the DDIM scheduler also steps back by T // steps, so its grids are only compared for steps dividing T.

Precision. diffusers keeps its schedule in float32 (betas, alphas_cumprod; DPM-Solver's sigmas too, and its `step`
casts the sample to float32). So (1) the schedule is compared at float32 rounding; (2) DDPM and DDIM are compared in
float64 after giving the schedulers our float64 alpha_bar (the same numbers, see (1); their update algebra then runs
in float64 and must agree to < 1e-10); (3) DPM-Solver's `step` is compared as shipped in float32 (< 1e-5 for samples
of size ~3, i.e. a few float32 ulps per step), and its update formulas are also called directly in float64 (< 1e-10).
"""
from __future__ import annotations

import pytest
import torch

from model import base, sampling
from wrap import denoise_fn

diffusers = pytest.importorskip("diffusers")

f64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


class TinyVNet:
    """A fixed random v-prediction network on (B, C, H, W): a 1x1 conv MLP with a time input, nonlinear in x and t."""

    def __init__(self, T: int, channels: int = 2, hidden: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.T = T
        self.W1 = torch.randn(hidden, channels, generator=g, dtype=f64) / 2
        self.b1 = torch.randn(hidden, generator=g, dtype=f64)
        self.w_t = torch.randn(hidden, generator=g, dtype=f64)
        self.W2 = torch.randn(channels, hidden, generator=g, dtype=f64) / 3

    def __call__(self, x_t, t, c=None):
        dt = x_t.dtype
        t_in = t.to(dt)[:, None] / self.T * 4 - 2  # (B, 1) in [-2, 2]
        h = torch.einsum("oc,bchw->bohw", self.W1.to(dt), x_t)  # (B, hidden, H, W)
        h = torch.tanh(h + (self.b1.to(dt) + self.w_t.to(dt) * t_in)[:, :, None, None])
        return torch.einsum("co,bohw->bchw", self.W2.to(dt), h) + 0.3 * x_t  # (B, C, H, W)


def x_noise(dtype=f64, seed=1):
    return torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def our_states(sampler, net, x_T, schedule, **kw):
    """Every state x_t after each step of one of our sample loops (the last one is the sample)."""
    seen = []
    sampler(denoise_fn(net, schedule), x_T, schedule, callback=lambda i, t, x_t, x0: seen.append(x_t), **kw)
    return seen


def their_states(scheduler, net, x_T, generator=None, **step_kw):
    """Every state after each `scheduler.step`, the network called at our t = k + 1 for diffusers' timestep k (the
    generator is passed only when given: UniPC's `step` takes none)."""
    if generator is not None:
        step_kw["generator"] = generator
    x, seen = x_T, []
    for k in scheduler.timesteps:
        t = torch.full((x.shape[0],), int(k) + 1, dtype=torch.int64)
        x = scheduler.step(net(x, t), k, x, **step_kw).prev_sample
        seen.append(x)
    return seen


def float64_sigmas(scheduler, schedule) -> None:
    """The solvers' sigmas at the scheduler's timesteps from our float64 alpha_bar, and 0 at the end (our t = 0)."""
    ab = schedule.alpha_bar[scheduler.timesteps + 1]  # (steps,)
    scheduler.sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=f64)])  # (steps + 1,)


def use_our_schedule(scheduler, schedule):
    """Give a diffusers scheduler our float64 alpha_bar (float32-equal to its own, see the schedule test)."""
    scheduler.betas = schedule.betas.clone()  # (T,)
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = schedule.alpha_bar[1:].clone()  # diffusers' k is our t = k + 1
    return scheduler


def max_diff(ours, theirs):
    assert len(ours) == len(theirs)
    return max((a - b).abs().max().item() for a, b in zip(ours, theirs))


def cosine_kw(T):
    return dict(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                timestep_spacing="trailing")


# ----------------------------------------------------------------------------------------------------------------
# the schedule and the time grid
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [100, 1000])
def test_cosine_schedule_is_squaredcos_cap_v2(T):
    # diffusers computes beta_k = min(1 - f((k+1)/T) / f(k/T), 0.999) in Python floats and stores it in float32;
    # ours (float64) rounded to float32 is bit for bit the same, with the index shift k <-> t = k + 1 (betas increase,
    # so a wrong shift could not be bitwise equal). Its alphas_cumprod is a float32 cumprod of those rounded betas:
    # relative error 1.3e-5 at t = T, where 1 - beta_T = 1e-3 magnifies beta_T's float32 rounding (6e-8), and at most
    # 5.6e-7 before (accumulated float32 rounding of the product).
    s = base.make_schedule("cosine", T)
    theirs = diffusers.DDPMScheduler(**cosine_kw(T))
    assert theirs.betas.dtype == torch.float32 and theirs.betas.shape == (T,)
    assert torch.equal(s.betas.float(), theirs.betas)
    torch.testing.assert_close(theirs.alphas_cumprod.double(), s.alpha_bar[1:], rtol=2e-5, atol=0)
    assert (theirs.alphas_cumprod[:-1].double() / s.alpha_bar[1:-1] - 1).abs().max().item() < 2e-6


@pytest.mark.parametrize("steps", [1, 10, 20, 50, 1000])
def test_trailing_spacing_is_our_grid_minus_one(steps):
    T = 1000
    ours = [t - 1 for t in base.timesteps_ddim(T, steps)[:-1]]  # our times but the final 0, as diffusers timesteps
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler, diffusers.DPMSolverMultistepScheduler):
        scheduler = cls(**cosine_kw(T))
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == ours, cls.__name__


# ----------------------------------------------------------------------------------------------------------------
# DDPM and DDIM: float64, to < 1e-10
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance,variance_type", [("beta_tilde", "fixed_small"), ("beta", "fixed_large")])
def test_ddpm_full_chain_matches(variance, variance_type):
    # Every step t -> t - 1 with the same generator: both draw N(0, I) noise on every step but the last (no noise at
    # t_prev = 0 here; diffusers' `if t > 0` on its k = 0), so the draws coincide and every state must agree.
    T = 100
    s, net, x_T = base.make_schedule("cosine", T), TinyVNet(T), x_noise()
    ddpm = diffusers.DDPMScheduler(**cosine_kw(T), variance_type=variance_type, clip_sample=False)
    theirs = use_our_schedule(ddpm, s)
    theirs.set_timesteps(T)
    a = our_states(sampling.sample_ddpm, net, x_T, s, variance=variance, generator=torch.Generator().manual_seed(5))
    b = their_states(theirs, net, x_T, generator=torch.Generator().manual_seed(5))
    assert max_diff(a, b) < 1e-10  # measured 1e-15
    assert (a[-1] - x_T).abs().max().item() > 0.1  # the loop did something


def test_ddpm_strided_matches_up_to_diffusers_last_step_noise():
    # 50 of 1000 steps with the betas implied by the jumps. diffusers' last timestep is k = 19 > 0 under trailing
    # spacing, so it draws noise once more and adds it with std sqrt(max(beta_tilde, 1e-20)) = 1e-10 (beta_tilde is 0
    # at t_prev = 0; its clamp keeps the log finite). We add no noise at t_prev = 0 and draw none, so that draw is the
    # next one of our generator after the loop: the final samples differ by exactly 1e-10 z.
    T = 1000
    s, net, x_T = base.make_schedule("cosine", T), TinyVNet(T), x_noise()
    theirs = use_our_schedule(diffusers.DDPMScheduler(**cosine_kw(T), clip_sample=False), s)
    theirs.set_timesteps(50)
    g = torch.Generator().manual_seed(7)
    a = our_states(sampling.sample_ddpm, net, x_T, s, steps=50, generator=g)
    b = their_states(theirs, net, x_T, generator=torch.Generator().manual_seed(7))
    assert max_diff(a[:-1], b[:-1]) < 1e-10  # measured 1e-14
    z = torch.randn(x_T.shape, generator=g, dtype=f64)
    assert (b[-1] - (a[-1] + 1e-10 * z)).abs().max().item() < 1e-12


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (10, 0.0), (50, 0.0), (20, 1.0)])
def test_ddim_matches(steps, eta):
    # eta = 0: deterministic. eta = 1: the same generator; both draw noise on every step but our last (diffusers draws
    # there too and multiplies it by sigma = 0), so the draws coincide. Measured: bitwise equal.
    T = 1000
    s, net, x_T = base.make_schedule("cosine", T), TinyVNet(T), x_noise()
    theirs = use_our_schedule(diffusers.DDIMScheduler(**cosine_kw(T), clip_sample=False, set_alpha_to_one=True), s)
    theirs.set_timesteps(steps)
    a = our_states(sampling.sample_ddim, net, x_T, s, steps=steps, eta=eta, generator=torch.Generator().manual_seed(3))
    b = their_states(theirs, net, x_T, generator=torch.Generator().manual_seed(3), eta=eta)
    assert max_diff(a, b) < 1e-10


def test_ddim_as_shipped_float32():
    # No schedule substitution: diffusers' own float32 alphas_cumprod, float32 samples. Measured 2e-6 at 50 steps.
    # (Not done for DDPM: diffusers forms beta_t = 1 - alphas_cumprod[t] / alphas_cumprod[t-1] from float32 values,
    # which near t = 0 (beta ~ 4e-5) keeps only ~3 digits; over 1000 steps the samples differ by ~5e-4 from our
    # float64 coefficients for that reason alone.)
    T = 1000
    s, net, x_T = base.make_schedule("cosine", T), TinyVNet(T), x_noise(torch.float32)
    theirs = diffusers.DDIMScheduler(**cosine_kw(T), clip_sample=False, set_alpha_to_one=True)
    theirs.set_timesteps(50)
    a, b = our_states(sampling.sample_ddim, net, x_T, s, steps=50), their_states(theirs, net, x_T)
    assert a[-1].dtype == b[-1].dtype == torch.float32
    assert max_diff(a, b) < 1e-5


# ----------------------------------------------------------------------------------------------------------------
# DPM-Solver++(2M)
# ----------------------------------------------------------------------------------------------------------------
def dpm_scheduler(T):
    # solver_order=2 + midpoint = Lu et al. Alg. 2; first step first order (lower_order_nums), last step first order
    # (final_sigmas_type="zero" forces lower_order_final), no thresholding, no Karras / lu-lambda sigmas.
    return diffusers.DPMSolverMultistepScheduler(
        **cosine_kw(T), algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
        euler_at_final=False, final_sigmas_type="zero", thresholding=False, use_karras_sigmas=False)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25, 16])
def test_dpmpp_2m_step_as_shipped_float32(steps):
    # diffusers' `step` in float32 (it casts the sample to float32 and keeps sigmas in float32 whatever the input), our
    # float32 loop with float64 coefficients. Measured <= 9.5e-7 over every state with |x| <= 3.3 (a few float32 ulps:
    # one ulp at 2-4 is 2.4e-7).
    # steps = 16 puts exact halves on the grid (62.5 k), which numpy's trailing spacing rounds to even: we pass our
    # grid as diffusers' custom timesteps there (its trailing grid has 811 where ours has 812).
    T = 1000
    s, net, x_T = base.make_schedule("cosine", T), TinyVNet(T), x_noise(torch.float32)
    theirs = dpm_scheduler(T)
    grid = [t - 1 for t in base.timesteps_dpm_solver(T, steps)[:-1]]
    if steps == 16:
        theirs.set_timesteps(timesteps=grid)
    else:
        theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == grid
    a, b = our_states(sampling.sample_dpmpp_2m, net, x_T, s, steps=steps), their_states(theirs, net, x_T)
    assert a[-1].dtype == b[-1].dtype == torch.float32
    assert max_diff(a, b) < 1e-5
    assert (a[-1] - x_T).abs().max().item() > 0.1


@pytest.mark.parametrize("steps", [3, 10, 25])
def test_dpmpp_2m_update_formulas_float64(steps):
    # The same algebra at float64: diffusers' convert_model_output and first / second order updates called directly
    # (`step` would cast to float32), on float64 sigmas of our schedule. The order of updates is the one diffusers'
    # `step` chooses with this configuration (first order at the first and the last step, second order between).
    # Measured: 1.6e-15.
    T = 1000
    s, net, x_T = base.make_schedule("cosine", T), TinyVNet(T), x_noise()
    theirs = use_our_schedule(dpm_scheduler(T), s)
    theirs.set_timesteps(steps)
    float64_sigmas(theirs, s)
    x, outputs, b = x_T, [], []
    for i, k in enumerate(theirs.timesteps):
        theirs._step_index = i  # what `step` would set; the update functions read sigmas at it
        outputs.append(theirs.convert_model_output(net(x, torch.full((x.shape[0],), int(k) + 1)), sample=x))
        if i == 0 or i == steps - 1:
            x = theirs.dpm_solver_first_order_update(outputs[-1], sample=x)
        else:
            x = theirs.multistep_dpm_solver_second_order_update(outputs[-2:], sample=x)
        b.append(x)
    a = our_states(sampling.sample_dpmpp_2m, net, x_T, s, steps=steps)
    assert b[-1].dtype == f64
    assert max_diff(a, b) < 1e-10


# ----------------------------------------------------------------------------------------------------------------
# UniPC
# ----------------------------------------------------------------------------------------------------------------
def unipc_scheduler(T):
    # diffusers' defaults for guided sampling: order 2, B(h) = e^h - 1 (bh2), data prediction, the corrector on every
    # step, first order at the first step (warm-up) and into the data (lower_order_final, sigma 0 at the end).
    return diffusers.UniPCMultistepScheduler(
        **cosine_kw(T), solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
        disable_corrector=[], final_sigmas_type="zero", thresholding=False, use_karras_sigmas=False)


def our_unipc(denoise, x_T, schedule, *, steps, callback):
    return sampling.loop.table_sampler("unipc", denoise, x_T, schedule, steps, None, "uniform", None, callback)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25])
def test_unipc_step_as_shipped_float32(steps):
    # Our uniform grid is diffusers' trailing one (asserted); float32 as shipped. Measured <= 1.2e-6 with |x| <= 5.
    T = 1000
    s, net, x_T = base.make_schedule("cosine", T), TinyVNet(T), x_noise(torch.float32)
    theirs = unipc_scheduler(T)
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == [t - 1 for t in base.timesteps_dpm_solver(T, steps)[:-1]]
    a, b = our_states(our_unipc, net, x_T, s, steps=steps), their_states(theirs, net, x_T)
    assert max_diff(a, b) < 1e-5
    assert (a[-1] - x_T).abs().max().item() > 0.1


@pytest.mark.parametrize("steps", [3, 10, 25])
def test_unipc_float64(steps):
    # UniPC's `step` keeps the sample's dtype, so given our float64 schedule and sigmas the whole predictor-corrector
    # runs in float64 through diffusers' own `step`. Measured: 1.3e-15. The corrector matters here: without it the
    # states are DPM-Solver++(2M)'s, which differ from these by far more (asserted).
    T = 1000
    s, net, x_T = base.make_schedule("cosine", T), TinyVNet(T), x_noise()
    theirs = use_our_schedule(unipc_scheduler(T), s)
    theirs.set_timesteps(steps)
    float64_sigmas(theirs, s)
    a, b = our_states(our_unipc, net, x_T, s, steps=steps), their_states(theirs, net, x_T)
    assert b[-1].dtype == f64
    assert max_diff(a, b) < 1e-10
    assert max_diff(our_states(sampling.sample_dpmpp_2m, net, x_T, s, steps=steps), b) > 1e-4
