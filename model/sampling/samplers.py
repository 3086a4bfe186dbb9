"""Samplers: one step function each, registered once with its name, display name, options and order.

A step takes the state x at level `cur` to level `nxt` (lower noise) and returns (x_next, x0), the x0 it predicted
on the way. `denoise(x, level) -> (x0, eps)` is the only access to the network (`model.denoising.Denoiser.bind`);
`state` is a dict the loop keeps for one trajectory (the multistep solvers' previous prediction). The loop
(`model/sampling/loop.py`) drives every sampler over a grid built outside it (`model/sampling/grids.py`).

Registering a sampler is all it takes to make it usable from the config, the command lines, the pipeline,
inpainting and reimagine: they read `SAMPLERS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from model import base
from model.base import Level

DenoiseAt = Callable[[Tensor, Level], tuple[Tensor, Tensor]]  # (x_t, level) -> (x0, eps)
Step = Callable[..., tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class SamplerInfo:
    """What the rest of the package knows of a sampler."""

    name: str  # the config and command-line value
    display: str  # for tables and messages
    step: Step
    order: int  # of convergence in the step size, on an exact denoiser (tests/test_samplers.py measures it)
    options: tuple[str, ...] = ()  # SamplerSpec fields it reads besides steps and spacing (eta, s_noise)
    evals_per_step: int = 1  # network calls per interval (Heun: 2, except into the data)
    every_step_by_default: bool = False  # steps None runs every step of the table (DDPM), else the config's
    multistep: bool = False  # keeps a history in `state`, so an interval cannot be repeated (RePaint resampling)
    stochastic: bool = False  # draws fresh noise at every step (an SDE or ancestral sampler)
    paper: str = ""


SAMPLERS: dict[str, SamplerInfo] = {}


def register(name: str, display: str, order: int, **info) -> Callable[[Step], Step]:
    def add(step: Step) -> Step:
        SAMPLERS[name] = SamplerInfo(name, display, step, order, **info)
        return step

    return add


def noise_like(x: Tensor, generator: Optional[torch.Generator], s_noise: float = 1.0) -> Tensor:
    """A draw of N(0, I) shaped like x, times `s_noise`: the stochastic samplers' fresh noise, scaled as Karras et al.
    2022 (Alg. 2, S_noise) scale it; above 1 it makes up for the detail and variety an imperfect denoiser removes."""
    return s_noise * base.sample_noise(tuple(x.shape), generator, x.device, x.dtype)  # times 1.0: the same bits


def previous_prediction(state: dict, key: str, x0: Tensor, cur: Level) -> Optional[tuple[Tensor, Level]]:
    """A multistep solver's (x0, level) of the step before, replaced by this step's."""
    prev = state.get(key)
    state[key] = (x0, cur)
    return prev


@register("ddpm", "DDPM", order=1, options=("s_noise",), every_step_by_default=True, stochastic=True,
          paper="Ho et al. 2020, Alg. 2")
def ddpm(denoise: DenoiseAt, x: Tensor, cur: Level, nxt: Level, state: dict, *,
         generator: Optional[torch.Generator] = None, variance: str = "beta_tilde",
         s_noise: float = 1.0) -> tuple[Tensor, Tensor]:
    """Ancestral step: x_next ~ q(x_next | x, x0) with the implied beta of the jump, no noise into the data;
    variance beta_tilde (the posterior's) or beta (Ho et al. Sec. 3.2)."""
    x0, _ = denoise(x, cur)
    mean, var = base.ddpm_posterior_at(x, cur.ab, nxt.ab, x0, variance)
    if nxt.is_data:
        return mean, x0
    return mean + base._sqrt(var) * noise_like(x, generator, s_noise), x0


@register("ddim", "DDIM", order=1, options=("eta", "s_noise"), paper="Song et al. 2021, eq. 12")
def ddim(denoise: DenoiseAt, x: Tensor, cur: Level, nxt: Level, state: dict, *, eta: float = 0.0,
         generator: Optional[torch.Generator] = None, s_noise: float = 1.0) -> tuple[Tensor, Tensor]:
    """x_next = sqrt(ab_next) x0 + sqrt(1 - ab_next - σ²) eps + σ z; eta = 0 is deterministic, 1 is DDPM."""
    x0, eps = denoise(x, cur)
    if nxt.is_data:
        return x0, x0
    z = noise_like(x, generator, s_noise) if eta > 0.0 else None
    return base.ddim_update(x, cur.ab, nxt.ab, x0, eps, eta, noise=z), x0


@register("dpmpp_2m", "DPM-Solver++(2M)", order=2, multistep=True, paper="Lu et al. 2022, Alg. 2")
def dpmpp_2m(denoise: DenoiseAt, x: Tensor, cur: Level, nxt: Level, state: dict, **_) -> tuple[Tensor, Tensor]:
    """Multistep data-prediction solver in lambda: D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h, on any
    grid; the first step and the step into the data are first order (= DDIM, eta 0)."""
    x0, _ = denoise(x, cur)
    prev = previous_prediction(state, "dpmpp_2m", x0, cur)
    if nxt.is_data:
        return x0, x0
    h = nxt.lam - cur.lam
    d = x0
    if prev is not None:
        x0_prev, level_prev = prev
        r = (cur.lam - level_prev.lam) / h
        d = x0 + (0.5 / r) * (x0 - x0_prev)
    return base.dpm_solver_update(x, d, cur.sigma, nxt.alpha, nxt.sigma, h), x0


@register("dpmpp_2m_sde", "DPM-Solver++(2M) SDE", order=1, options=("s_noise",), multistep=True, stochastic=True,
          paper="Lu et al. 2022b, Sec. 4 (the SDE solver), midpoint form as k-diffusion")
def dpmpp_2m_sde(denoise: DenoiseAt, x: Tensor, cur: Level, nxt: Level, state: dict, *,
                 generator: Optional[torch.Generator] = None, s_noise: float = 1.0, **_) -> tuple[Tensor, Tensor]:
    """The second-order multistep solver of the reverse SDE (noise η = 1) in lambda:

    x_next = (sigma_next / sigma) e^{-h} x + alpha_next (1 - e^{-2h}) (x0 + (1 / (2r)) (x0 - x0_prev))
             + sigma_next sqrt(1 - e^{-2h}) s_noise z,
    the correction only after the first step; into the data it returns x0."""
    x0, _ = denoise(x, cur)
    prev = previous_prediction(state, "dpmpp_2m_sde", x0, cur)
    if nxt.is_data:
        return x0, x0
    h = nxt.lam - cur.lam
    decay = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
    x_next = (nxt.sigma / cur.sigma * math.exp(-h)) * x + (nxt.alpha * decay) * x0
    if prev is not None:
        x0_prev, level_prev = prev
        r = (cur.lam - level_prev.lam) / h
        x_next = x_next + (nxt.alpha * decay * 0.5 / r) * (x0 - x0_prev)
    return x_next + (nxt.sigma * math.sqrt(decay)) * noise_like(x, generator, s_noise), x0


# ----- Karras et al. 2022: the probability-flow ODE in the variance-exploding view x̃ = x / alpha ---------------------
def euler_update(x: Tensor, x0: Tensor, cur: Level, nxt: Level) -> Tensor:
    """x̃_next = x̃ + (σ_next - σ) (x̃ - x0) / σ (Karras et al. 2022, Alg. 1 line 4-5, s = 1), written back in x:

        x_next = (sigma_next / sigma) x + (alpha_next - sigma_next alpha / sigma) x0,

    which is the same number and stays finite at pure noise (alpha = 0, σ infinite)."""
    ratio = nxt.sigma / cur.sigma
    return ratio * x + (nxt.alpha - ratio * cur.alpha) * x0


@register("euler", "Euler", order=1, paper="Karras et al. 2022, Alg. 1 without churn")
def euler(denoise: DenoiseAt, x: Tensor, cur: Level, nxt: Level, state: dict, **_) -> tuple[Tensor, Tensor]:
    """One Euler step of the ODE dx̃/dσ = (x̃ - D(x̃; σ)) / σ; into the data it returns x0 (σ_next = 0)."""
    x0, _ = denoise(x, cur)
    if nxt.is_data:
        return x0, x0
    return euler_update(x, x0, cur, nxt), x0


@register("heun", "Heun", order=2, evals_per_step=2, paper="Karras et al. 2022, Alg. 2 without churn")
def heun(denoise: DenoiseAt, x: Tensor, cur: Level, nxt: Level, state: dict, **_) -> tuple[Tensor, Tensor]:
    """An Euler step, then the trapezoidal correction with the slope d' = (x̃_next - x0_next) / σ_next at its end:
    x̃_next = x̃ + (σ_next - σ) (d + d') / 2. The step into the data stays Euler (the slope is undefined at σ = 0), as
    in Karras et al., and so does a step from pure noise (an infinite step has no trapezoid)."""
    x0, _ = denoise(x, cur)
    if nxt.is_data:
        return x0, x0
    if cur.alpha == 0.0:
        return euler_update(x, x0, cur, nxt), x0
    d = (x / cur.alpha - x0) / cur.sigma_ve
    dsigma = nxt.sigma_ve - cur.sigma_ve
    x_ve = x / cur.alpha + dsigma * d
    x0_next, _ = denoise(nxt.alpha * x_ve, nxt)
    d_next = (x_ve - x0_next) / nxt.sigma_ve
    return nxt.alpha * (x / cur.alpha + dsigma * 0.5 * (d + d_next)), x0


# ----- UniPC (Zhao et al. 2023): the DPM-Solver++(2M) predictor, then a corrector that reuses the next evaluation ----
def unic_weights(h: float, r1: Optional[float]) -> tuple[float, ...]:
    """The corrector's weights ρ of UniC-p for data prediction with B(h) = e^{-h} - 1 ("bh2"; Zhao et al. 2023,
    Alg. 2). With p = 2, ρ solves [[1, 1], [r1, 1]] ρ = g, where g_k = k! ψ_k / B(h) are the exponential
    integrator's Taylor terms: ψ_1 = (e^{-h} - 1) / (-h) - 1, ψ_{k+1} = ψ_k / (-h) - 1 / (k + 1)!.
    p = 1 (r1 None) takes the paper's ρ = 1/2."""
    if r1 is None:
        return (0.5,)
    b_h = math.expm1(-h)
    psi1 = b_h / -h - 1.0
    psi2 = psi1 / -h - 0.5
    g1, g2 = psi1 / b_h, 2.0 * psi2 / b_h
    rho1 = (g1 - g2) / (1.0 - r1)
    return rho1, g1 - rho1


def unipc_update(x: Tensor, m0: Tensor, diffs: list[Tensor], rhos: tuple[float, ...], s: Level, t: Level) -> Tensor:
    """x_t = (σ_t / σ_s) x - α_t (e^{-h} - 1) (m0 + Σ ρ_k D_k): UniPC's update (the factor B(h) of its sum cancels
    against the ρ's 1 / B(h)), an exponential-integrator step of the combined prediction."""
    d = m0
    for rho, diff in zip(rhos, diffs):
        d = d + rho * diff
    return base.dpm_solver_update(x, d, s.sigma, t.alpha, t.sigma, t.lam - s.lam)


@register("unipc", "UniPC", order=3, multistep=True,
          paper="Zhao et al. 2023, UniPC-2 with B(h) = e^h - 1 (bh2), data prediction, as diffusers' default")
def unipc(denoise: DenoiseAt, x: Tensor, cur: Level, nxt: Level, state: dict, **_) -> tuple[Tensor, Tensor]:
    """Evaluate x0 at the predicted x, correct x with it (UniC, no extra network call), then predict the next state
    with UniP-2 (which is DPM-Solver++(2M)). The first step is first order; the step into the data returns x0. The
    corrected state gets the loop's `after_step` too (inpainting), since it replaces the predicted one."""
    x0, _ = denoise(x, cur)
    history = [(x0, cur)]
    if "unipc" in state:  # correct: x is recomputed from the last step's start with x0 at both ends
        x_s, past = state["unipc"]
        m0, s0 = past[-1]
        h = cur.lam - s0.lam
        diffs, r1 = [], None
        if len(past) == 2:
            m1, s1 = past[0]
            r1 = (s1.lam - s0.lam) / h
            diffs.append((m1 - m0) / r1)
        x = unipc_update(x_s, m0, diffs + [x0 - m0], unic_weights(h, r1), s0, cur)
        if state.get("after_step") is not None:
            x = state["after_step"](x, cur)
        history = [past[-1], (x0, cur)]
    state["unipc"] = (x, history)
    if nxt.is_data:
        return x0, x0
    diffs = []
    if len(history) == 2:  # second order after the first step
        m1, s1 = history[0]
        diffs.append((m1 - x0) / ((s1.lam - cur.lam) / (nxt.lam - cur.lam)))
    return unipc_update(x, x0, diffs, (0.5,), cur, nxt), x0
