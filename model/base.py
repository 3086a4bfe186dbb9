"""Pure diffusion math: schedules, parametrisation conversions, q_sample, the loss, the step math, CFG.

No Lightning, no module state. Conventions (docs/design.md, math conventions):

- Discrete time t in {0, 1, ..., T}; t = 0 is data. `alpha_bar` has length T + 1, alpha_bar[0] = 1, strictly
  decreasing, and betas[t-1] = 1 - alpha_bar[t] / alpha_bar[t-1].
- Schedules are float64 on the CPU; coefficients are gathered and computed in float64 and cast to the data's
  dtype and device at the edge (`coef`).
- A network predicts eps, x0 or v; `to_x0_eps` turns any of them into the pair (x0, eps) and every sampler step
  works from that pair.
- Continuous time t ∈ [0, 1] for sampling: `Schedule.level(t)` gives a `Level` (t, alpha_bar, the network's time);
  the table's step k is t = k / T exactly. The samplers, the grids and the loop are in `model/sampling/`.
- Networks follow `net(x_t, t, c) -> Tensor` (t (B,): int64 steps in training, float times when sampling; c int64
  (B,) or None) in their parametrisation; samplers see only `denoise(x_t, level) -> (x0, eps)`, the wrapper of
  `model/denoising.py` (network, parametrisation, guidance and clipping behind one callable).

Papers: Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (cosine schedule), Song et al. 2021 (DDIM),
Salimans & Ho 2022 (v-parametrisation), Ho & Salimans 2022 (classifier-free guidance), Hang et al. 2023 (min-SNR-γ),
Lu et al. 2022 (DPM-Solver++).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import torch
from torch import Tensor

from model import conditioning


Parametrisation = Literal["eps", "x0", "v"]
PARAMETRISATIONS = ("eps", "x0", "v")
Network = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]  # (x_t, t (B,), c) -> output in its parametrisation
TimeLike = Union[int, Tensor]


# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------
def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T <= 0:
        raise ValueError(f"the number of diffusion steps T must be an integer > 0, got {T!r}")


def _alpha_bar_from_betas(betas: Tensor) -> Tensor:
    """alpha_bar[0] = 1 and alpha_bar[t] = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, eq. 4), float64 (T+1,)."""
    ones = torch.ones(1, dtype=torch.float64)
    return torch.cat([ones, torch.cumprod(1.0 - betas.to(torch.float64), dim=0)])


def _check_betas_range(beta_start: float, beta_end: float, name: str) -> None:
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"{name} schedule needs 0 < beta_start < beta_end < 1, got beta_start={beta_start}, "
                         f"beta_end={beta_end}; pick values like 1e-4 and 0.02")


def linear_alpha_bar(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear schedule (Ho et al. 2020, Sec. 4): beta_t linearly spaced from beta_start (t=1) to beta_end (t=T).

    The endpoints are not rescaled with T: for small T (e.g. 200) alpha_bar[T] stays far from 0 (about e^-2).
    """
    _check_T(T)
    _check_betas_range(beta_start, beta_end, "linear")
    return _alpha_bar_from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine_alpha_bar(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha_bar_t = f(t) / f(0).

    f(t) = cos^2((t/T + s) / (1 + s) · π/2). The betas 1 - alpha_bar_t / alpha_bar_{t-1} are clipped at max_beta
    (their Sec. 3.2; only the last, singular step is hit) and alpha_bar is rebuilt as cumprod(1 - beta) so it agrees
    with the clipped betas.
    """
    _check_T(T)
    if s < 0.0:
        raise ValueError(f"cosine schedule offset s must be >= 0, got {s}; the paper uses 0.008")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"cosine schedule max_beta must be in (0, 1), got {max_beta}; the paper uses 0.999")
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1.0 + s) * (math.pi / 2.0)) ** 2  # (T+1,)
    ab = f / f[0]
    betas = (1.0 - ab[1:] / ab[:-1]).clamp(max=max_beta)  # (T,)
    return _alpha_bar_from_betas(betas)


def sigmoid_alpha_bar(T: int, beta_start: float = 1e-4, beta_end: float = 0.02, s_limit: float = 6.0) -> Tensor:
    """Sigmoid schedule (seed sheet 000, eq. 10), for t = 1..T:

    beta_t = beta_start + σ(-s_limit + 2t/T · s_limit) · (beta_end - beta_start).
    s_limit selects the part of the logistic σ that is used: σ(-s_limit) at t = 0 up to σ(s_limit) at t = T.
    """
    _check_T(T)
    _check_betas_range(beta_start, beta_end, "sigmoid")
    if s_limit <= 0.0:
        raise ValueError(f"sigmoid schedule s_limit must be > 0, got {s_limit}; the sheet uses 6")
    t = torch.arange(1, T + 1, dtype=torch.float64)
    betas = beta_start + torch.sigmoid(-s_limit + 2.0 * t / T * s_limit) * (beta_end - beta_start)  # (T,)
    return _alpha_bar_from_betas(betas)


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_alpha_bar,
    "cosine": cosine_alpha_bar,
    "sigmoid": sigmoid_alpha_bar,
}


def rescale_zero_terminal_snr(alpha_bar: Tensor) -> Tensor:
    """Zero terminal SNR (Lin et al. 2024, Alg. 1): sqrt(alpha_bar_t) over t = 1..T shifted so that alpha_bar_T = 0
    exactly and scaled so that alpha_bar_1 is kept; then the last step is pure noise, as sampling assumes.

        sqrt(ab)' = (sqrt(ab) - sqrt(ab_T)) sqrt(ab_1) / (sqrt(ab_1) - sqrt(ab_T)),   ab_0 = 1 stays (the data).

    An eps network cannot predict x0 from pure noise; train v or x0 on the rescaled table."""
    root = alpha_bar[1:].sqrt()  # (T,)
    first, last = root[0].clone(), root[-1].clone()
    if not first > last:
        raise ValueError("zero terminal SNR needs alpha_bar_1 > alpha_bar_T (T >= 2)")
    root = (root - last) * first / (first - last)
    return torch.cat([alpha_bar[:1], root**2])


@dataclass(frozen=True, eq=False)
class Schedule:
    """A noise schedule: `alpha_bar` (float64, CPU, length T+1, alpha_bar[0] = 1, strictly decreasing, >= 0; 0 only
    at T, pure noise, as the flow path's table at t = 1)."""

    alpha_bar: Tensor

    def __post_init__(self) -> None:
        ab = torch.as_tensor(self.alpha_bar).detach().to(device="cpu", dtype=torch.float64)
        if ab.ndim != 1 or ab.numel() < 2:
            raise ValueError(f"alpha_bar must be a 1-D tensor of length T+1 >= 2, got shape {tuple(ab.shape)}")
        if ab[0].item() != 1.0 or not bool((ab[1:] < ab[:-1]).all()) or not ab[-1].item() >= 0.0:
            raise ValueError("alpha_bar must start at 1, decrease strictly and stay >= 0; build it with make_schedule")
        object.__setattr__(self, "alpha_bar", ab)
        object.__setattr__(self, "_values", tuple(ab.tolist()))  # Python floats: coefficients at an int t, no tensors

    @property
    def T(self) -> int:
        return self.alpha_bar.numel() - 1

    @property
    def betas(self) -> Tensor:
        """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} for t = 1..T, float64 (T,); betas[t-1] is beta_t."""
        return 1.0 - self.alpha_bar[1:] / self.alpha_bar[:-1]

    @property
    def sqrt_alpha_bar(self) -> Tensor:
        return self.alpha_bar.sqrt()

    @property
    def sqrt_one_minus_alpha_bar(self) -> Tensor:
        return (1.0 - self.alpha_bar).sqrt()

    @property
    def log_snr(self) -> Tensor:
        """log SNR_t = log(alpha_bar_t / (1 - alpha_bar_t)); +inf at t = 0."""
        return self.alpha_bar.log() - (1.0 - self.alpha_bar).log()

    def gather(self, table: Union[str, Tensor], t: TimeLike, like: Tensor) -> Tensor:
        """`coef` on one of this schedule's tables, by name ("alpha_bar", "sqrt_alpha_bar", ...) or as a tensor."""
        return coef(getattr(self, table) if isinstance(table, str) else table, t, like)

    # ----- continuous time: t in [0, 1], the table's step k at t = k / T ---------------------------------------
    def ab_at(self, t: float) -> float:
        """alpha_bar at continuous time t ∈ [0, 1]: the table's value at t = k / T exactly; in between, log-SNR
        linear in t (alpha_bar itself between t = 0 and 1 / T, where log-SNR is infinite at the data end)."""
        s = _index(t, self.T)
        k = round(s)
        if abs(s - k) <= INDEX_TOLERANCE:
            return self._values[k]
        lo = math.floor(s)
        f = s - lo
        if lo == 0:
            return (1.0 - f) + f * self._values[1]
        lam = (1.0 - f) * _log_snr(self._values[lo]) + f * _log_snr(self._values[lo + 1])
        return 1.0 / (1.0 + math.exp(-lam))

    def t_at_log_snr(self, log_snr: float) -> float:
        """The continuous time whose alpha_bar has this log-SNR (the inverse of `ab_at`), clamped to [1/T, 1]."""
        table = self._log_snr_values()
        if log_snr >= table[1]:
            return 1.0 / self.T
        if log_snr <= table[-1]:
            return 1.0
        k = bisect.bisect_left(self._negated_log_snrs, -log_snr)  # table[k] > log_snr >= table[k + 1]
        f = (table[k] - log_snr) / (table[k] - table[k + 1])
        return (k + f) / self.T

    def _log_snr_values(self) -> list[float]:
        if not hasattr(self, "_log_snrs"):  # built on first use: training never needs them
            table = [math.inf] + [_log_snr(v) for v in self._values[1:]]
            object.__setattr__(self, "_log_snrs", table)
            object.__setattr__(self, "_negated_log_snrs", [-v for v in table[1:]])  # ascending, for bisect
        return self._log_snrs

    def net_time(self, t: float) -> float:
        """What a network trained on this T-step table embeds at continuous time t: the step T·t (a whole number on
        the table's own times, so those networks see exactly the times they were trained on)."""
        s = _index(t, self.T)
        k = round(s)
        return float(k) if abs(s - k) <= INDEX_TOLERANCE else s

    def level(self, t: float) -> "Level":
        """The noise level at continuous time t ∈ [0, 1]."""
        return Level(t, self.ab_at(t), self.net_time(t))

    def level_at_step(self, k: int) -> "Level":
        """The noise level at the table's step k ∈ {0, ..., T} (t = k / T)."""
        if not 0 <= k <= self.T:
            raise ValueError(f"t must lie in [0, T={self.T}], got {k}")
        return Level(k / self.T, self._values[k], float(k))

    def level_at_log_snr(self, log_snr: float) -> "Level":
        """The noise level with this log-SNR exactly (Karras σ and log-SNR grids), at its time on the table."""
        t = self.t_at_log_snr(log_snr)
        return Level(t, 1.0 / (1.0 + math.exp(-log_snr)), self.net_time(t))


INDEX_TOLERANCE = 1e-9  # |T·t - k| below this is the table's step k (t = k / T in floating point)


def _index(t: float, T: int) -> float:
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"continuous time t must lie in [0, 1], got {t}")
    return t * T


def _log_snr(ab: float) -> float:
    if ab <= 0.0:
        return -math.inf
    return math.log(ab) - math.log1p(-ab) if ab < 1.0 else math.inf


@dataclass(frozen=True)
class Level:
    """One noise level of a sampling grid: continuous time t ∈ [0, 1] (0 is data), alpha_bar there (float64), and the
    time the network embeds. Every sample of a batch shares it, so a step's coefficients are Python floats."""

    t: float
    ab: float
    net_time: float

    @property
    def alpha(self) -> float:
        return math.sqrt(self.ab)

    @property
    def sigma(self) -> float:
        return math.sqrt(max(1.0 - self.ab, 0.0))

    @property
    def lam(self) -> float:
        """Half the log-SNR, log(alpha / sigma) (Lu et al. 2022); +inf at the data."""
        sigma, alpha = self.sigma, self.alpha
        if alpha == 0.0:
            return -math.inf
        return math.log(alpha) - math.log(sigma) if sigma > 0.0 else math.inf

    @property
    def sigma_ve(self) -> float:
        """σ = sigma / alpha, the noise level of the variance-exploding view x / alpha (Karras et al. 2022, eq. 2);
        +inf at pure noise."""
        return self.sigma / self.alpha if self.alpha > 0.0 else math.inf

    @property
    def is_data(self) -> bool:
        return self.ab >= 1.0


def make_schedule(name: str, T: int, zero_terminal_snr: bool = False, **kwargs) -> Schedule:
    """The schedule registered under `name` in SCHEDULES with T steps, rescaled to zero terminal SNR if asked; kwargs
    go to its alpha_bar function."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    _check_T(T)
    alpha_bar = SCHEDULES[name](T, **kwargs)
    return Schedule(rescale_zero_terminal_snr(alpha_bar) if zero_terminal_snr else alpha_bar)


# ----------------------------------------------------------------------------------------------------------------
# Gathering coefficients at t
# ----------------------------------------------------------------------------------------------------------------
def _time(t: TimeLike, like: Tensor, T: int) -> Tensor:
    """t as an int64 CPU tensor (B,), checked to lie in [0, T]; an int is repeated for the whole batch."""
    B = like.shape[0]
    if isinstance(t, Tensor):
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"t must be an integer tensor, got dtype {t.dtype}")
        t = t.detach().to("cpu", torch.int64).reshape(-1)
        if t.numel() == 1 and B != 1:
            t = t.expand(B)
        if t.numel() != B:
            raise ValueError(f"t has {t.numel()} entries but the batch has {B}; pass one t per sample")
    else:
        t = torch.full((B,), int(t), dtype=torch.int64)
    if B and (int(t.min()) < 0 or int(t.max()) > T):
        raise ValueError(f"t must lie in [0, T={T}], got values in [{int(t.min())}, {int(t.max())}]")
    return t


def _gather64(table: Tensor, t: TimeLike, like: Tensor) -> Tensor:
    """table[t] in float64 on like's device, shaped (B, 1, ..., 1) to broadcast against like.

    MPS has no float64, so there the values are float32 (the computation after the gather loses a little).
    """
    idx = _time(t, like, table.numel() - 1)
    dtype = torch.float32 if like.device.type == "mps" else torch.float64
    vals = table.to(torch.float64)[idx].to(device=like.device, dtype=dtype)  # (B,)
    return vals.reshape(-1, *([1] * (like.ndim - 1)))  # (B, 1, ..., 1)


def coef(table: Tensor, t: TimeLike, like: Tensor) -> Tensor:
    """table[t] cast to like's dtype and device, shaped (B, 1, 1, 1) for images and (B, 1) for points.

    table is a float64 tensor of length T+1 indexed by t (e.g. `schedule.alpha_bar`); t is an int or an int (B,).
    """
    return _gather64(table, t, like).to(like.dtype)


Coef = Union[float, Tensor]  # a coefficient: a Python float when every sample is at one int t, else (B, 1, ..)


def _is_int(t: TimeLike) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _ab(schedule: Schedule, t: TimeLike, like: Tensor) -> Coef:
    """alpha_bar_t: a Python float (float64) for an int t, the same for the whole batch, so a sampler step does no
    tensor work for its coefficients; for a tensor t, float64 (B, 1, ..) on like's device (`_gather64`)."""
    if _is_int(t):
        if not 0 <= t <= schedule.T:
            raise ValueError(f"t must lie in [0, T={schedule.T}], got {t}")
        return schedule._values[t]
    return _gather64(schedule.alpha_bar, t, like)


def _sqrt(v: Coef) -> Coef:
    return math.sqrt(v) if isinstance(v, float) else v.sqrt()


def _nonneg(v: Coef) -> Coef:
    return max(v, 0.0) if isinstance(v, float) else v.clamp_min(0.0)


def _cast(v: Coef, like: Tensor) -> Coef:
    """A float64 coefficient in like's dtype; a Python float is left to PyTorch's scalar promotion (the same)."""
    return v if isinstance(v, float) else v.to(like.dtype)


def _roots(ab: Coef, like: Tensor) -> tuple[Coef, Coef]:
    """(sqrt(ab), sqrt(1 - ab)), computed in float64 (precise near ab = 1), cast to like's dtype."""
    return _cast(_sqrt(ab), like), _cast(_sqrt(_nonneg(1.0 - ab)), like)


# ----------------------------------------------------------------------------------------------------------------
# Forward process and conversions between parametrisations
# ----------------------------------------------------------------------------------------------------------------
def q_sample(x0: Tensor, t: TimeLike, eps: Tensor, schedule: Schedule) -> Tensor:
    """Forward process q(x_t | x0) (Ho et al. 2020, eq. 4): x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps."""
    sa, s1 = _roots(_ab(schedule, t, x0), x0)
    return sa * x0 + s1 * eps


def v_from_x0_eps(x0: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022, Sec. 4 / App. D)."""
    sa, s1 = _roots(ab, x0)
    return sa * eps - s1 * x0


def x0_from_v(x_t: Tensor, v: Tensor, ab: Tensor) -> Tensor:
    """x0 = sqrt(ab) x_t - sqrt(1 - ab) v (Salimans & Ho 2022)."""
    sa, s1 = _roots(ab, x_t)
    return sa * x_t - s1 * v


def eps_from_v(x_t: Tensor, v: Tensor, ab: Tensor) -> Tensor:
    """eps = sqrt(1 - ab) x_t + sqrt(ab) v (Salimans & Ho 2022)."""
    sa, s1 = _roots(ab, x_t)
    return s1 * x_t + sa * v


def x0_from_eps(x_t: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) (Ho et al. 2020, eq. 4 solved for x0).

    Divides by sqrt(ab): finite for every t in [0, T] of our schedules (alpha_bar[T] > 0), but near t = T it
    amplifies errors in eps by sqrt((1 - ab) / ab) (about 2e4 at t = T for the clipped cosine schedule, T = 1000).
    """
    sa, s1 = _roots(ab, x_t)
    return (x_t - s1 * eps) / sa


def eps_from_x0(x_t: Tensor, x0: Tensor, ab: Tensor) -> Tensor:
    """eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab) (Ho et al. 2020, eq. 4 solved for eps); needs t >= 1 (ab < 1)."""
    sa, s1 = _roots(ab, x_t)
    return (x_t - sa * x0) / s1


def _check_parametrisation(parametrisation: str) -> None:
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"unknown parametrisation {parametrisation!r}; choose one of {', '.join(PARAMETRISATIONS)}")


def to_x0_eps(pred: Tensor, x_t: Tensor, t: TimeLike, schedule: Schedule,
              parametrisation: Parametrisation) -> tuple[Tensor, Tensor]:
    """The pair (x0, eps) implied by a network output `pred` in `parametrisation` at (x_t, t); needs t >= 1."""
    return x0_eps_from_output(pred, x_t, _ab(schedule, t, x_t), parametrisation)


def x0_eps_from_output(pred: Tensor, x_t: Tensor, ab: Coef, parametrisation: Parametrisation) -> tuple[Tensor, Tensor]:
    """`to_x0_eps` at a given alpha_bar (a float, or (B, 1, ..) float64) instead of a time on a schedule."""
    _check_parametrisation(parametrisation)
    if parametrisation == "eps":
        return x0_from_eps(x_t, pred, ab), pred
    if parametrisation == "x0":
        return pred, eps_from_x0(x_t, pred, ab)
    return x0_from_v(x_t, pred, ab), eps_from_v(x_t, pred, ab)


def training_target(x0: Tensor, eps: Tensor, t: TimeLike, schedule: Schedule,
                    parametrisation: Parametrisation) -> Tensor:
    """What a network in `parametrisation` should output for x_t = q_sample(x0, t, eps): eps, x0 or v."""
    _check_parametrisation(parametrisation)
    if parametrisation == "eps":
        return eps
    if parametrisation == "x0":
        return x0
    return v_from_x0_eps(x0, eps, _ab(schedule, t, x0))


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------
def min_snr_weight(snr: Tensor, gamma: float, parametrisation: Parametrisation) -> Tensor:
    """Min-SNR-γ weight (Hang et al. 2023, Sec. 3.4) on the loss of `parametrisation`'s target.

    The weight on the x0-space loss ||x0_hat - x0||^2 is min(SNR_t, γ), SNR_t = ab_t / (1 - ab_t). With x_t fixed,
    ||x0_hat - x0||^2 = ||eps_hat - eps||^2 / SNR = ||v_hat - v||^2 / (SNR + 1), hence the target-space weights
    eps: min(SNR, γ) / SNR, x0: min(SNR, γ), v: min(SNR, γ) / (SNR + 1).
    """
    _check_parametrisation(parametrisation)
    clipped = snr.clamp(max=gamma)
    if parametrisation == "eps":
        return clipped / snr
    if parametrisation == "x0":
        return clipped
    return clipped / (snr + 1.0)


def per_sample_error(pred: Tensor, target: Tensor, kind: Literal["l2", "l1"] = "l2") -> Tensor:
    """The error averaged over every non-batch dim, squared ("l2") or absolute ("l1"), (B,)."""
    err = pred - target
    return (err.square() if kind == "l2" else err.abs()).flatten(1).mean(dim=1)


def diffusion_loss(pred: Tensor, x0: Tensor, eps: Tensor, t: TimeLike, schedule: Schedule,
                   parametrisation: Parametrisation = "v", kind: Literal["l2", "l1"] = "l2",
                   min_snr_gamma: Optional[float] = None) -> Tensor:
    """Per-sample loss (B,) between `pred` and the target (L_simple of Ho et al. 2020, eq. 14, for eps).

    The error is averaged over all non-batch dims (squared for "l2", absolute for "l1"). With `min_snr_gamma`, each
    sample is weighted by `min_snr_weight` (exact x0-space equivalence holds for l2; for l1 it is the same weight).
    """
    _check_parametrisation(parametrisation)
    if kind not in ("l2", "l1"):
        raise ValueError(f"unknown loss kind {kind!r}; choose one of l2, l1")
    if pred.shape != x0.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from the data shape {tuple(x0.shape)}")
    loss = per_sample_error(pred, training_target(x0, eps, t, schedule, parametrisation), kind)
    if min_snr_gamma is not None:
        if not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0 or None, got {min_snr_gamma}; Hang et al. use 5")
        ab = _gather64(schedule.alpha_bar, t, loss)  # (B,)
        loss = loss * min_snr_weight(ab / (1.0 - ab), min_snr_gamma, parametrisation).to(loss.dtype)
    return loss


# ----------------------------------------------------------------------------------------------------------------
# Single steps
# ----------------------------------------------------------------------------------------------------------------
def sample_noise(shape: tuple[int, ...], generator: Optional[torch.Generator] = None,
                 device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU seed gives the same noise everywhere)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device=device)


def _times(t: TimeLike, t_next: TimeLike, like: Tensor, T: int) -> tuple[TimeLike, TimeLike]:
    """(t, t_next) checked to satisfy 0 <= t_next < t <= T: as ints when both are ints (a sampler loop), else as
    int64 (B,) tensors (per-sample times)."""
    if _is_int(t) and _is_int(t_next):
        if not 0 <= t_next < t <= T:
            raise ValueError(f"a reverse step needs 0 <= t_next < t <= T={T}, got t={t} and t_next={t_next}")
        return t, t_next
    t_, n_ = _time(t, like, T), _time(t_next, like, T)
    if not bool((n_ < t_).all()):
        raise ValueError(f"a reverse step needs t_next < t, got t={t_.tolist()[:4]} and t_next={n_.tolist()[:4]}")
    return t_, n_


def _where_done(t_next: TimeLike, x0: Tensor, x_next: Tensor) -> Tensor:
    """x_next, except x0 exactly for the samples whose t_next is 0 (tensor times; an int 0 returns earlier)."""
    if _is_int(t_next) or bool((t_next > 0).all()):
        return x_next
    done = (t_next == 0).to(x_next.device).reshape(-1, *([1] * (x_next.ndim - 1)))  # (B, 1, ..)
    return torch.where(done, x0, x_next)


def _all_done(t_next: TimeLike) -> bool:
    return t_next == 0 if _is_int(t_next) else not bool((t_next > 0).any())


def ddpm_posterior(x_t: Tensor, t: TimeLike, t_prev: TimeLike, x0: Tensor, schedule: Schedule,
                   variance: Literal["beta_tilde", "beta"] = "beta_tilde") -> tuple[Tensor, Coef]:
    """Mean and variance of q(x_{t_prev} | x_t, x0) (Ho et al. 2020, eq. 6-7), with the implied beta.

    beta = 1 - ab_t / ab_prev (= beta_t when t_prev = t - 1, the beta of the jump otherwise), and
    mean = sqrt(ab_prev) beta / (1 - ab_t) x0 + sqrt(1 - beta) (1 - ab_prev) / (1 - ab_t) x_t,
    variance = beta_tilde = beta (1 - ab_prev) / (1 - ab_t) ("beta_tilde") or beta ("beta"; Ho et al. Sec. 3.2);
    a float for int times, (B, 1, ..) for per-sample times.
    """
    if variance not in ("beta_tilde", "beta"):
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of beta_tilde, beta")
    t_, p_ = _times(t, t_prev, x_t, schedule.T)
    return ddpm_posterior_at(x_t, _ab(schedule, t_, x_t), _ab(schedule, p_, x_t), x0, variance)


def ddpm_posterior_at(x_t: Tensor, ab_t: Coef, ab_p: Coef, x0: Tensor,
                      variance: Literal["beta_tilde", "beta"] = "beta_tilde") -> tuple[Tensor, Coef]:
    """`ddpm_posterior` between two alpha_bar values (floats, or (B, 1, ..) float64) instead of two times."""
    beta = 1.0 - ab_t / ab_p
    c_x0 = _sqrt(ab_p) * beta / (1.0 - ab_t)
    c_xt = _sqrt(1.0 - beta) * (1.0 - ab_p) / (1.0 - ab_t)
    var = beta * (1.0 - ab_p) / (1.0 - ab_t) if variance == "beta_tilde" else beta
    mean = _cast(c_x0, x_t) * x0 + _cast(c_xt, x_t) * x_t
    return mean, _cast(var, x_t)


def ddpm_step(x_t: Tensor, t: TimeLike, t_prev: TimeLike, x0: Tensor, schedule: Schedule,
              noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
              variance: Literal["beta_tilde", "beta"] = "beta_tilde") -> Tensor:
    """DDPM ancestral step (Ho et al. 2020, Alg. 2): x_{t_prev} ~ q(x_{t_prev} | x_t, x0), no noise at t_prev = 0."""
    mean, var = ddpm_posterior(x_t, t, t_prev, x0, schedule, variance)
    keep = t_prev > 0 if _is_int(t_prev) else _time(t_prev, x_t, schedule.T) > 0  # samples that still get noise
    if not bool(keep if isinstance(keep, bool) else keep.any()):
        return mean
    if noise is None:
        noise = sample_noise(x_t.shape, generator, x_t.device, x_t.dtype)
    if isinstance(keep, bool):
        return mean + _sqrt(var) * noise
    mask = keep.to(device=x_t.device, dtype=x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))  # (B, 1, ..)
    return mean + mask * var.sqrt() * noise


def ddim_sigma(t: TimeLike, t_next: TimeLike, schedule: Schedule, eta: float, like: Tensor) -> Coef:
    """σ of Song et al. 2021, eq. 16: eta · sqrt((1 - ab_next) / (1 - ab_t)) · sqrt(1 - ab_t / ab_next), float64."""
    return ddim_sigma_at(_ab(schedule, t, like), _ab(schedule, t_next, like), eta)


def ddim_sigma_at(ab_t: Coef, ab_n: Coef, eta: float) -> Coef:
    """`ddim_sigma` between two alpha_bar values."""
    return eta * _sqrt(_nonneg((1.0 - ab_n) / (1.0 - ab_t) * (1.0 - ab_t / ab_n)))


def _check_eta(eta: float) -> None:
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1] (0 = deterministic, 1 = DDPM-like), got {eta}")


def ddim_step(x_t: Tensor, t: TimeLike, t_next: TimeLike, x0: Tensor, eps: Tensor, schedule: Schedule,
              eta: float = 0.0, noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """DDIM step (Song et al. 2021, eq. 12) from t to any t_next < t; eta = 0 is deterministic, eta = 1 is DDPM.

    x_next = sqrt(ab_next) x0 + sqrt(1 - ab_next - σ^2) eps + σ z with σ from eq. 16 (`ddim_sigma`);
    t_next = 0 returns x0 exactly (ab_0 = 1, σ = 0). x_t only fixes the batch, device and time checks here.
    """
    _check_eta(eta)
    t_, n_ = _times(t, t_next, x_t, schedule.T)
    if _all_done(n_):
        return x0
    x_next = ddim_update(x_t, _ab(schedule, t_, x_t), _ab(schedule, n_, x_t), x0, eps, eta, noise, generator)
    return _where_done(n_, x0, x_next)


def ddim_update(x_t: Tensor, ab_t: Coef, ab_n: Coef, x0: Tensor, eps: Tensor, eta: float = 0.0,
                noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Song et al. 2021, eq. 12 between two alpha_bar values, the target one < 1 (`ddim_step` returns x0 at 0)."""
    sigma = ddim_sigma_at(ab_t, ab_n, eta)
    c_eps = _sqrt(_nonneg(1.0 - ab_n - sigma * sigma))
    x_next = _cast(_sqrt(ab_n), x_t) * x0 + _cast(c_eps, x_t) * eps
    if eta > 0.0:
        if noise is None:
            noise = sample_noise(x_t.shape, generator, x_t.device, x_t.dtype)
        x_next = x_next + _cast(sigma, x_t) * noise
    return x_next


def alpha_sigma_lambda(schedule: Schedule, t: TimeLike, like: Tensor) -> tuple[Coef, Coef, Coef]:
    """(alpha_t, sigma_t, lambda_t) in float64: sqrt(ab_t), sqrt(1 - ab_t), log(alpha_t / sigma_t); floats for an
    int t, (B, 1, ..) tensors for per-sample t.

    lambda is half the log-SNR (Lu et al. 2022, Sec. 2); it is +inf at t = 0 (sigma_0 = 0).
    """
    ab = _ab(schedule, t, like)
    alpha, sigma = _sqrt(ab), _sqrt(_nonneg(1.0 - ab))
    if isinstance(ab, float):
        return alpha, sigma, math.log(alpha) - math.log(sigma) if sigma > 0.0 else math.inf
    return alpha, sigma, alpha.log() - sigma.log()


def dpmpp_2m_step(x_t: Tensor, t: TimeLike, t_next: TimeLike, x0: Tensor, schedule: Schedule,
                  x0_prev: Optional[Tensor] = None, t_prev: Optional[TimeLike] = None) -> Tensor:
    """One DPM-Solver++(2M) step (Lu et al. 2022, Alg. 2) from t to t_next < t with the data prediction x0 at t:

    x_next = (sigma_next / sigma_t) x_t - alpha_next (e^{-h} - 1) D,  h = lambda_next - lambda_t,
    D = x0 (first order, = DDIM with eta = 0) without x0_prev, else D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev with
    r = h_prev / h, h_prev = lambda_t - lambda_prev, x0_prev the prediction at the previous time t_prev > t.
    At t_next = 0 (sigma = 0, lambda = +inf, r = 0) the step is first order and returns x0 exactly.
    """
    t_, n_ = _times(t, t_next, x_t, schedule.T)
    if _all_done(n_):
        return x0
    _, sigma_t, lam_t = alpha_sigma_lambda(schedule, t_, x_t)
    alpha_n, sigma_n, lam_n = alpha_sigma_lambda(schedule, n_, x_t)
    h = lam_n - lam_t  # float64, +inf where t_next = 0
    d = x0
    if x0_prev is not None:
        if t_prev is None:
            raise ValueError("a second-order DPM-Solver++ step needs t_prev, the time of x0_prev")
        p_, _ = _times(t_prev, t_, x_t, schedule.T)
        _, _, lam_p = alpha_sigma_lambda(schedule, p_, x_t)
        r = (lam_t - lam_p) / h  # h_prev / h; 0 where t_next = 0
        if isinstance(r, float):
            k = 0.5 / r
        else:  # the samples whose last step is to t = 0 stay first order
            inner = (n_ > 0).to(x_t.device).reshape(-1, *([1] * (x_t.ndim - 1)))  # (B, 1, ..)
            k = torch.where(inner, 0.5 / r, torch.zeros_like(r))
        d = x0 + _cast(k, x_t) * (x0 - x0_prev)
    return _where_done(n_, x0, dpm_solver_update(x_t, d, sigma_t, alpha_n, sigma_n, h))


def dpm_solver_update(x_t: Tensor, d: Tensor, sigma_t: Coef, alpha_n: Coef, sigma_n: Coef, h: Coef) -> Tensor:
    """x_next = (sigma_next / sigma_t) x_t - alpha_next (e^{-h} - 1) D, the exponential-integrator step of the
    data-prediction solvers (Lu et al. 2022, eq. 9 and Alg. 2) for a combined prediction D."""
    decay = alpha_n * (math.expm1(-h) if isinstance(h, float) else torch.expm1(-h))
    return _cast(sigma_n / sigma_t, x_t) * x_t - _cast(decay, x_t) * d


def clip_x0(x0: Tensor, clip_limit: Optional[float]) -> Tensor:
    """Clamp every element of the predicted x0 (data or latent) to [-clip_limit, clip_limit]; None or inf: no-op."""
    if clip_limit is None or clip_limit == math.inf:
        return x0
    if not clip_limit > 0:
        raise ValueError(f"clip_limit must be > 0 or None (no clipping), got {clip_limit}")
    return x0.clamp(-clip_limit, clip_limit)


# ----------------------------------------------------------------------------------------------------------------
# Guidance and prediction
# ----------------------------------------------------------------------------------------------------------------
def classifier_free_guidance(denoiser: Network, w: float, null_class: int, rescale: float = 0.0,
                             uncond=None) -> Network:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): out = (1 + w) out(x, c) - w out(x, ∅); w = 0 is plain c.

    One batched call on [cond; uncond]. The unconditional input is `uncond` where given (a condition of the same
    batch and kind as c: the null class with the empty or a negative prompt, `model.conditioning`), else c's labels
    set to null_class. The mix is affine with weights summing to 1, so guiding v or x0 outputs equals guiding the
    implied eps (the conversions are affine in the output). `rescale` = φ > 0 pulls the guided output's per-sample
    std back towards the conditional one's (`rescale_guidance`).
    """
    if not math.isfinite(w):
        raise ValueError(f"guidance scale w must be a finite number, got {w}")
    if isinstance(null_class, bool) or not isinstance(null_class, int) or null_class < 0:
        raise ValueError(f"null_class must be an int >= 0 (the index of the learned null embedding), "
                         f"got {null_class!r}")

    def guided(x_t: Tensor, t: Tensor, c) -> Tensor:
        if c is None:
            raise ValueError("classifier-free guidance needs class labels c; pass labels or use w = 0")
        if w == 0.0:
            return denoiser(x_t, t, c)
        if uncond is None and not isinstance(c, Tensor):
            raise ValueError("guidance on a prompt needs its unconditional condition (the empty or negative prompt)")
        c_uncond = torch.full_like(c, null_class) if uncond is None else uncond
        out = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), conditioning.cat(c, c_uncond))
        cond, uncond_out = out.chunk(2)  # each (B, ...)
        return rescale_guidance((1.0 + w) * cond - w * uncond_out, cond, rescale)

    return guided


def autoguidance(denoiser: Network, guide: Network, weight: float) -> Network:
    """Autoguidance (Karras et al. 2024, eq. 2): out = guide(x, c) + (1 + a)(out(x, c) - guide(x, c)), with `guide` a
    weaker version of the same model (fewer steps or less capacity, the same condition) and a = `weight`; a = 0 is the
    model itself. The two share their errors in kind, the guide's larger, so stepping away from it removes what the
    model gets wrong without pushing every sample towards its class's mode, as classifier-free guidance does: variety
    is kept. Affine with weights summing to 1, so it holds for any parametrisation's output, as for CFG."""
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"the autoguidance weight must be a finite number >= 0, got {weight}")
    if weight == 0.0:
        return denoiser

    def guided(x_t: Tensor, t: Tensor, c) -> Tensor:
        weak = guide(x_t, t, c)
        return weak + (1.0 + weight) * (denoiser(x_t, t, c) - weak)

    return guided


def rescale_guidance(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """CFG rescale (Lin et al. 2024, eq. 15-16): x_rescaled = x_cfg std(x_pos) / std(x_cfg), the std over each
    sample's elements, and φ x_rescaled + (1 - φ) x_cfg; strong guidance then stops over-exposing. φ = 0: x_cfg."""
    if phi == 0.0:
        return guided
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1.0 - phi) * guided


def training_noise(x0: Tensor, offset: float = 0.0) -> Tensor:
    """eps ~ N(0, I) like x0, plus `offset` times one N(0, 1) per sample and channel, shared by all its pixels (offset
    noise, Guttenberg 2023): the model then also learns to change an image's mean, which plain noise at the last
    steps never asks of it. offset 0 draws exactly `torch.randn_like(x0)`."""
    eps = torch.randn_like(x0)
    if offset:
        eps = eps + offset * torch.randn(*x0.shape[:2], *([1] * (x0.ndim - 2)), dtype=x0.dtype, device=x0.device)
    return eps


def predict_x0_eps(denoiser: Network, x_t: Tensor, t: TimeLike, c: Optional[Tensor], schedule: Schedule,
                   parametrisation: Parametrisation, clip_limit: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """Call the network at (x_t, t, c) and return the pair (x0, eps), with x0 clipped by `clip_x0`.

    Where clipping changed an element of x0, eps is recomputed there from the clipped x0,
    eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t), so the pair stays consistent with x_t; elsewhere it is untouched.
    """
    if isinstance(t, Tensor):
        t = t.to(device=x_t.device, dtype=torch.int64)
        t_vec = t
    else:
        t = int(t)
        t_vec = torch.full((x_t.shape[0],), t, dtype=torch.int64, device=x_t.device)  # (B,)
    pred = denoiser(x_t, t_vec, c)
    x0, eps = to_x0_eps(pred, x_t, t, schedule, parametrisation)
    return _clipped(x0, eps, x_t, _ab(schedule, t, x_t), clip_limit)


def predict_at_level(denoiser: Network, x_t: Tensor, level: Level, c: Optional[Tensor],
                     parametrisation: Parametrisation, clip_limit: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """`predict_x0_eps` at a noise level of a sampling grid: the network gets the level's float time (B,)."""
    t_vec = torch.full((x_t.shape[0],), level.net_time, dtype=torch.float32, device=x_t.device)  # (B,)
    x0, eps = x0_eps_from_output(denoiser(x_t, t_vec, c), x_t, level.ab, parametrisation)
    return _clipped(x0, eps, x_t, level.ab, clip_limit)


def _clipped(x0: Tensor, eps: Tensor, x_t: Tensor, ab: Coef, clip_limit: Optional[float]) -> tuple[Tensor, Tensor]:
    """x0 clipped by `clip_x0`, and eps recomputed from it where clipping changed it (the pair stays consistent)."""
    clipped = clip_x0(x0, clip_limit)
    if clipped is not x0:
        changed = clipped != x0
        eps = torch.where(changed, eps_from_x0(x_t, clipped, ab), eps)
    return clipped, eps


# ----------------------------------------------------------------------------------------------------------------
# Timesteps and loops
# ----------------------------------------------------------------------------------------------------------------
SPACINGS = ("uniform", "noise-dense")  # how a sampler's times are spread between t_start and 0


def _spaced(T: int, steps: Optional[int], t_start: Optional[int], spacing: str = "uniform") -> list[int]:
    """steps + 1 descending ints from t_start to 0.

    "uniform": evenly spaced, t_i = round(t_start (n - i) / n) (rounded half up, exact integer arithmetic).
    "noise-dense": t_i = round(t_start (1 - (i / n)^2)), short steps where sampling starts (high noise, where the
    global shape is decided) and long ones near t = 0; kept strictly decreasing with room for the steps left.
    """
    _check_T(T)
    t_start = T if t_start is None else t_start
    if isinstance(t_start, bool) or not isinstance(t_start, int) or not 1 <= t_start <= T:
        raise ValueError(f"t_start must be an integer in [1, T={T}], got {t_start!r}")
    steps = t_start if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= t_start:
        raise ValueError(f"sampling steps must be an integer in [1, {t_start}] (at most t_start, i.e. T={T} from "
                         f"pure noise), got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if spacing == "uniform":
        # t_i = round(t_start (steps - i) / steps); the spacing t_start/steps >= 1 makes the rounded values distinct.
        return [(2 * t_start * (steps - i) + steps) // (2 * steps) for i in range(steps + 1)]
    times = [t_start]
    for i in range(1, steps + 1):
        target = math.floor(t_start * (1.0 - (i / steps) ** 2) + 0.5)
        times.append(max(min(target, times[-1] - 1), steps - i))
    return times


def timesteps_ddpm(T: int, steps: Optional[int] = None, t_start: Optional[int] = None,
                   spacing: str = "uniform") -> list[int]:
    """Descending times [t_start, ..., 0] for DDPM: every step by default, else `steps` jumps (`_spaced`)."""
    return _spaced(T, steps, t_start, spacing)


def timesteps_ddim(T: int, steps: int, t_start: Optional[int] = None, spacing: str = "uniform") -> list[int]:
    """Descending times [t_start, ..., 0] for DDIM: `steps` jumps (`_spaced`: rounded, unique)."""
    if steps is None:
        raise ValueError("DDIM needs a number of steps, e.g. 50")
    return _spaced(T, steps, t_start, spacing)


def timesteps_dpm_solver(T: int, steps: int, t_start: Optional[int] = None, spacing: str = "uniform") -> list[int]:
    """Descending times [t_start, ..., 0] for DPM-Solver++: `steps` jumps, the same times as DDIM."""
    if steps is None:
        raise ValueError("DPM-Solver++ needs a number of steps, e.g. 20")
    return _spaced(T, steps, t_start, spacing)
