"""Time grids: the noise levels a sampler visits, from the start (pure noise, or a given x_t) down to the data.

Every grid is built here, outside the sampling loop, as a descending list of `base.Level`s whose last entry is the
data (t = 0). `steps` is the number of intervals, so a sampler of order 1 calls the network `steps` times.

- "uniform": the table's steps round(k_start (n - i) / n) (Song et al. 2021's uniform DDIM spacing);
- "noise-dense": round(k_start (1 - (i / n)^2)), short steps at high noise where the global shape is decided;
- "karras": σ_i = (σ_max^(1/ρ) + i / (n - 1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ, ρ = 7, then σ = 0 (Karras et al.
  2022, eq. 5), with σ = sigma / alpha the variance-exploding noise level;
- "logsnr": log-SNR evenly spaced between the start and the least noisy step of the table, then the data (the
  spacing of DPM-Solver, Lu et al. 2022, Sec. 3.3 "uniform lambda").

On a T-step table the first two visit only the table's own times (so networks trained on them see exactly those);
the last two fall between them, where the schedule's log-SNR is interpolated (`base.Schedule.ab_at`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from model import base
from model.base import Level, Schedule

KARRAS_RHO = 7.0  # Karras et al. 2022, Sec. 3: ρ = 7 balances the truncation error along the trajectory

GridFn = Callable[[Schedule, int, int], list[Level]]  # (schedule, steps, start step k_start) -> levels


def table_grid(spacing: str) -> GridFn:
    """A grid on the table's own steps (`base._spaced`, which checks steps and the start)."""
    def grid(schedule: Schedule, steps: int, k_start: int) -> list[Level]:
        return [schedule.level_at_step(k) for k in base._spaced(schedule.T, steps, k_start, spacing)]

    return grid


def karras(schedule: Schedule, steps: int, k_start: int) -> list[Level]:
    lam_max, lam_min = end_log_snrs(schedule, steps, k_start)
    s_max, s_min = math.exp(-lam_max / 2), math.exp(-lam_min / 2)  # σ = exp(-log-SNR / 2)
    if steps == 1:
        sigmas = [s_max]
    else:
        a, b = s_max ** (1 / KARRAS_RHO), s_min ** (1 / KARRAS_RHO)
        sigmas = [(a + i / (steps - 1) * (b - a)) ** KARRAS_RHO for i in range(steps)]
    return [schedule.level_at_step(k_start), *(schedule.level_at_log_snr(-2 * math.log(s)) for s in sigmas[1:]),
            schedule.level_at_step(0)]


def logsnr(schedule: Schedule, steps: int, k_start: int) -> list[Level]:
    lam_max, lam_min = end_log_snrs(schedule, steps, k_start)
    inner = [lam_max + i / (steps - 1) * (lam_min - lam_max) for i in range(1, steps)] if steps > 1 else []
    return [schedule.level_at_step(k_start), *(schedule.level_at_log_snr(lam) for lam in inner),
            schedule.level_at_step(0)]


def end_log_snrs(schedule: Schedule, steps: int, k_start: int) -> tuple[float, float]:
    """The log-SNR at the start and at the least noisy step of the table (k = 1), the ends of the σ grids. A start at
    pure noise (alpha_bar 0, σ infinite: the flow table at t = 1) takes the σ of the step below it as σ_max; the grid
    still starts at pure noise, and its first interval goes from there to the grid's second level."""
    base._spaced(schedule.T, steps, k_start)  # the same checks of steps and start as the table grids
    lam_max = base._log_snr(schedule.level_at_step(k_start).ab)
    if lam_max == -math.inf:
        lam_max = base._log_snr(schedule.level_at_step(k_start - 1).ab)
    return lam_max, base._log_snr(schedule.level_at_step(1).ab)


GRIDS: dict[str, GridFn] = {"uniform": table_grid("uniform"), "noise-dense": table_grid("noise-dense"),
                            "karras": karras, "logsnr": logsnr}


def make_grid(schedule: Schedule, spacing: str, steps: Optional[int], k_start: Optional[int] = None) -> list[Level]:
    """The levels of `spacing` with `steps` intervals from the table's step k_start (default T) down to the data;
    steps None: every step of the table."""
    if spacing not in GRIDS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(GRIDS)}")
    k_start = schedule.T if k_start is None else k_start
    return GRIDS[spacing](schedule, k_start if steps is None else steps, k_start)
