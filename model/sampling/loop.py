"""The one sampling loop: a registered sampler's step over a grid of noise levels.

    x = x_T;  for each interval (cur, nxt) of the grid:  x, x0 = step(denoise, x, cur, nxt, state)

Inpainting adds `after_step` (put the known region back at the level reached) and RePaint's `resample` (repeat an
interval, diffusing back in between, Lugmayr et al. 2022, Alg. 1), so every single-step sampler inpaints too.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from model import base
from model.base import Level, Schedule
from model.sampling.grids import make_grid
from model.sampling.samplers import SAMPLERS, DenoiseAt, SamplerInfo, noise_like
from model.sampling.spec import SamplerSpec

LevelCallback = Callable[[int, Level, Tensor, Tensor], None]  # (i, level reached, x there, x0 predicted on the way)
AfterStep = Callable[[Tensor, Level], Tensor]  # (x_next, its level) -> x_next


@torch.no_grad()
def sample(denoise: DenoiseAt, x_T: Tensor, schedule: Schedule, spec: SamplerSpec, *,
           k_start: Optional[int] = None, generator: Optional[torch.Generator] = None,
           callback: Optional[LevelCallback] = None, after_step: Optional[AfterStep] = None,
           resample: int = 1) -> Tensor:
    """Run `spec` from x_T (pure noise at T, or a given x_t at the table's step k_start) down to the data.

    `denoise(x, level) -> (x0, eps)` with guidance and clipping already bound (`Denoiser.bind`); the generator draws
    the stochastic samplers' noise; callback(i, level, x, x0) runs after every interval."""
    levels = make_grid(schedule, spec.spacing, spec.steps, k_start)
    return run(spec.info, denoise, x_T, levels, spec.options(), generator=generator, callback=callback,
               after_step=after_step, resample=resample)


def run(info: SamplerInfo, denoise: DenoiseAt, x: Tensor, levels: list[Level], options: dict, *,
        generator: Optional[torch.Generator] = None, callback: Optional[LevelCallback] = None,
        after_step: Optional[AfterStep] = None, resample: int = 1) -> Tensor:
    if resample < 1:
        raise ValueError(f"resample must be >= 1 (1 = no resampling), got {resample}")
    if resample > 1 and info.multistep:
        raise ValueError(f"{info.display} keeps a history of its steps, which resampling would repeat; resample "
                         f"with one of {', '.join(n for n, s in SAMPLERS.items() if not s.multistep)}")
    state: dict = {"after_step": after_step}  # a corrector (UniPC) replaces a state after the loop's after_step
    for i, (cur, nxt) in enumerate(zip(levels[:-1], levels[1:])):
        for r in range(resample):
            x_next, x0 = info.step(denoise, x, cur, nxt, state, generator=generator, **options)
            if after_step is not None:
                x_next = after_step(x_next, nxt)
            if r < resample - 1 and not nxt.is_data:
                x = renoise(x_next, nxt, cur, generator)
        x = x_next
        if callback is not None:
            callback(i, nxt, x, x0)
    return x


def renoise(x: Tensor, level: Level, to: Level, generator: Optional[torch.Generator]) -> Tensor:
    """A draw of q(x_to | x_level) for a noisier `to`: sqrt(a) x + sqrt(1 - a) z with a = ab_to / ab_level."""
    a = to.ab / level.ab
    return math.sqrt(a) * x + math.sqrt(1.0 - a) * noise_like(x, generator)


# ----- one sampler by name, on the table's own times (the functions of the course sheets) ------------------------
def table_sampler(name: str, denoise: DenoiseAt, x_T: Tensor, schedule: Schedule, steps: Optional[int],
                  t_start: Optional[int], spacing: str, generator: Optional[torch.Generator],
                  callback: Optional[Callable[[int, int, Tensor, Tensor], None]], **options) -> Tensor:
    """`sample` with the sampler `name` from the table's step t_start; callback(i, t, x_t, x0) gets the step t."""
    levels = make_grid(schedule, spacing, steps, t_start)
    on_level = None if callback is None else (lambda i, lv, x, x0: callback(i, round(lv.t * schedule.T), x, x0))
    with torch.no_grad():
        return run(SAMPLERS[name], denoise, x_T, levels, options, generator=generator, callback=on_level)


def sample_ddpm(denoise: DenoiseAt, x_T: Tensor, schedule: Schedule, *, steps: Optional[int] = None,
                t_start: Optional[int] = None, variance: str = "beta_tilde",
                generator: Optional[torch.Generator] = None, callback=None, spacing: str = "uniform") -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2): every step by default, else `steps` strided jumps."""
    if variance not in ("beta_tilde", "beta"):
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of beta_tilde, beta")
    return table_sampler("ddpm", denoise, x_T, schedule, steps, t_start, spacing, generator, callback,
                         variance=variance)


def sample_ddim(denoise: DenoiseAt, x_T: Tensor, schedule: Schedule, *, steps: int = 50,
                t_start: Optional[int] = None, eta: float = 0.0, generator: Optional[torch.Generator] = None,
                callback=None, spacing: str = "uniform") -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12); eta = 0 is deterministic."""
    if steps is None:
        raise ValueError("DDIM needs a number of steps, e.g. 50")
    base._check_eta(eta)
    return table_sampler("ddim", denoise, x_T, schedule, steps, t_start, spacing, generator, callback, eta=eta)


def sample_dpmpp_2m(denoise: DenoiseAt, x_T: Tensor, schedule: Schedule, *, steps: int = 20,
                    t_start: Optional[int] = None, callback=None, spacing: str = "uniform") -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), one network call per step."""
    if steps is None:
        raise ValueError("DPM-Solver++ needs a number of steps, e.g. 20")
    return table_sampler("dpmpp_2m", denoise, x_T, schedule, steps, t_start, spacing, None, callback)
