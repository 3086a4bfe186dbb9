"""Training objectives: the forward process a network is trained on, what it predicts, and how its output becomes
the pair (x0, eps) at a sampling level.

Every objective samples through the same loop (`model/sampling/`), whose state lives in the variance-preserving
coordinates of `base.Level`: x = alpha x0 + sigma eps with alpha² + sigma² = 1. A process with other coefficients
(a, s) is the same process up to a scale: at the level with alpha / sigma = a / s its state is x · a / alpha. So an
objective only has to map a level to its own coordinates, call the network there, and return (x0, eps), which mean
the same in every process. Each objective also gives the T-step table its sampling grids are built on.

- "vp": the discrete variance-preserving table of `denoiser.diffusion.schedule` with an eps, x0 or v network
  (Ho et al. 2020, Salimans & Ho 2022); t is the table's integer step.
- "flow": rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023): x_t = (1 - t) x0 + t eps, the network
  predicts the velocity u = eps - x0, so x0 = x_t - t u and eps = x_t + (1 - t) u; t is drawn logit-normal
  (Esser et al. 2024, Sec. 3.1, m = 0, s = 1).
- "edm": Karras et al. 2022 (Table 1): x = x0 + σ n, D(x; σ) = c_skip x + c_out F(c_in x; c_noise) with
  c_skip = σ_d² / (σ² + σ_d²), c_out = σ σ_d / sqrt(σ² + σ_d²), c_in = 1 / sqrt(σ² + σ_d²), c_noise = ln(σ) / 4,
  which the network embeds as 1000 c_noise (the span its sinusoidal embedding resolves); ln σ ~ N(P_mean, P_std²)
  relative to the data's scale (the paper's levels for σ_d = 0.5 scaled to σ_d) and the loss λ(σ) ||D - x0||² with
  λ = 1 / c_out², i.e. ||F - (x0 - c_skip x) / c_out||².

Adding an objective: a class here with `table`, `predict`, `draw`, `at_step` and `loss`, and its name in OBJECTIVES.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from model import base

Network = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]  # (x, the network's time (B,), c) -> output

FLOW_TIME_SCALE = 1000.0  # the flow network embeds 1000 t (as SD3): the range of the VP tables' step numbers
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2  # ln σ ~ N(P_mean, P_std²) in training (Karras et al. 2022, Table 1) ...
EDM_SIGMA_DATA = 0.5  # ... for the σ_data of their images: ln(σ / σ_data) keeps that distribution for any σ_data
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0  # the σ range of their sampler (Table 1)
EDM_TIME_SCALE = 1000.0  # the network embeds 1000 c_noise: c_noise = ln(σ) / 4 spans ~2.6 over the σ range, and the
#                          sinusoidal embedding resolves a span of ~1000 (the VP tables' step numbers)


def _column(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)  # (B, 1, ..)


def _time_vector(value: float, x: Tensor) -> Tensor:
    """The network's time for every sample, in x's precision (float64 oracles stay exact), (B,)."""
    return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)


class VP:
    """The discrete variance-preserving process of a T-step table, with an eps, x0 or v network."""

    name = "vp"

    def __init__(self, schedule: base.Schedule, parametrisation: base.Parametrisation = "v", loss: str = "l2",
                 min_snr_gamma: Optional[float] = None) -> None:
        base._check_parametrisation(parametrisation)
        self.schedule, self.parametrisation, self.kind, self.min_snr_gamma = schedule, parametrisation, loss, min_snr_gamma

    @property
    def table(self) -> base.Schedule:
        return self.schedule

    def predict(self, net: Network, x: Tensor, level: base.Level, c: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return base.predict_at_level(net, x, level, c, self.parametrisation)

    def draw(self, n: int, device) -> Tensor:
        """Training steps t ~ U{1, ..., T} (B,) int64."""
        return torch.randint(1, self.schedule.T + 1, (n,), device=device)

    def at_step(self, k: int, n: int, device) -> Tensor:
        return torch.full((n,), k, dtype=torch.long, device=device)

    def loss(self, net: Network, x0: Tensor, c: Optional[Tensor], t: Tensor, eps: Tensor) -> Tensor:
        """L_simple on the parametrisation's target (min-SNR-γ weighted when set), (B,)."""
        pred = net(base.q_sample(x0, t, eps, self.schedule), t, c)
        return base.diffusion_loss(pred, x0, eps, t, self.schedule, self.parametrisation, self.kind,
                                   self.min_snr_gamma)


def flow_alpha_bar(T: int) -> Tensor:
    """The VP table of the flow path at t = k / T: alpha_bar = (1 - t)² / ((1 - t)² + t²), 0 at t = 1 (pure noise)."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    return (1 - t) ** 2 / ((1 - t) ** 2 + t**2)


class Flow:
    """Rectified flow: x_t = (1 - t) x0 + t eps, the network predicts u = eps - x0 at time 1000 t."""

    name = "flow"

    def __init__(self, T: int, loss: str = "l2", logit_mean: float = 0.0, logit_std: float = 1.0) -> None:
        # (m, s) = (0, 1) is Esser et al. 2024's best setting of the logit-normal t
        self.table, self.kind = base.Schedule(flow_alpha_bar(T)), loss
        self.logit_mean, self.logit_std = logit_mean, logit_std

    @staticmethod
    def time(level: base.Level) -> float:
        """The flow time with the level's signal-to-noise ratio: (1 - t) / t = alpha / sigma."""
        return level.sigma / (level.alpha + level.sigma)

    def predict(self, net: Network, x: Tensor, level: base.Level, c: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        t = self.time(level)
        x_t = x / (level.alpha + level.sigma)  # (1 - t) / alpha = 1 / (alpha + sigma)
        u = net(x_t, _time_vector(FLOW_TIME_SCALE * t, x), c)
        return x_t - t * u, x_t + (1 - t) * u

    def draw(self, n: int, device) -> Tensor:
        """t = sigmoid(m + s n), n ~ N(0, 1): the logit-normal density of Esser et al. 2024, (B,) float32."""
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, device=device))

    def at_step(self, k: int, n: int, device) -> Tensor:
        return torch.full((n,), k / (self.table.T), dtype=torch.float32, device=device)

    def loss(self, net: Network, x0: Tensor, c: Optional[Tensor], t: Tensor, eps: Tensor) -> Tensor:
        """||u(x_t, t) - (eps - x0)||² (conditional flow matching, Lipman et al. 2023, eq. 23), (B,)."""
        tc = _column(t, x0)
        x_t = (1 - tc) * x0 + tc * eps
        return base.per_sample_error(net(x_t, FLOW_TIME_SCALE * t.to(x0.dtype), c), eps - x0, self.kind)


def edm_alpha_bar(T: int) -> Tensor:
    """A VP table for EDM's grids: σ log-uniform from σ_min (k = 1) to σ_max (k = T), alpha_bar = 1 / (1 + σ²)."""
    log_sigma = torch.linspace(math.log(EDM_SIGMA_MIN), math.log(EDM_SIGMA_MAX), T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), 1.0 / (1.0 + torch.exp(2 * log_sigma))])


class EDM:
    """Karras et al. 2022's preconditioning, noise distribution and loss weight (Table 1, "Ours")."""

    name = "edm"

    def __init__(self, T: int, loss: str = "l2", sigma_data: float = 1.0) -> None:
        self.table, self.kind, self.sigma_data = base.Schedule(edm_alpha_bar(T)), loss, sigma_data

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) at σ (floats or tensors)."""
        sd = self.sigma_data
        root = (sigma**2 + sd**2) ** 0.5
        log = math.log(sigma) if isinstance(sigma, float) else sigma.log()
        return sd**2 / root**2, sigma * sd / root, 1 / root, log / 4

    def denoised(self, net: Network, x: Tensor, sigma, c: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """(D(x; σ), F's output) for x = x0 + σ n."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_noise = EDM_TIME_SCALE * c_noise
        noise = c_noise.to(x.dtype).reshape(-1) if isinstance(c_noise, Tensor) else _time_vector(c_noise, x)
        out = net(c_in * x, noise, c)
        return c_skip * x + c_out * out, out

    def predict(self, net: Network, x: Tensor, level: base.Level, c: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        sigma = level.sigma_ve
        x_ve = x / level.alpha
        d, _ = self.denoised(net, x_ve, sigma, c)
        return d, (x_ve - d) / sigma

    def draw(self, n: int, device) -> Tensor:
        """σ with ln(σ / σ_data) ~ N(P_mean - ln 0.5, P_std²), (B,) float32: the paper's noise levels relative to the
        data's scale (P_mean = -1.2 was set for images of σ_data = 0.5; unit-variance latents need σ twice as large:
        docs/evaluation.md measures both on the digits latents)."""
        mean = EDM_P_MEAN + math.log(self.sigma_data / EDM_SIGMA_DATA)
        return torch.exp(mean + EDM_P_STD * torch.randn(n, device=device))

    def at_step(self, k: int, n: int, device) -> Tensor:
        return torch.full((n,), self.table.level_at_step(k).sigma_ve, dtype=torch.float32, device=device)

    def loss(self, net: Network, x0: Tensor, c: Optional[Tensor], sigma: Tensor, eps: Tensor) -> Tensor:
        """λ(σ) ||D - x0||², computed as ||F - (x0 - c_skip x) / c_out||² (the same, λ = 1 / c_out²), (B,)."""
        s = _column(sigma, x0)
        x = x0 + s * eps
        c_skip, c_out, _, _ = self.coefficients(s)
        _, out = self.denoised(net, x, s, c)
        return base.per_sample_error(out, (x0 - c_skip * x) / c_out, self.kind)


OBJECTIVES: dict[str, Callable] = {  # denoiser.diffusion.objective -> the objective of a config section
    "vp": lambda d: VP(base.make_schedule(d.schedule, d.T, d.zero_terminal_snr), d.parametrisation,
                       d.loss, d.min_snr_gamma),
    "flow": lambda d: Flow(d.T, d.loss, d.flow_logit_mean, d.flow_logit_std),
    "edm": lambda d: EDM(d.T, d.loss, d.sigma_data),
}


def from_config(diffusion):
    """The objective of a `denoiser.diffusion` config section."""
    return OBJECTIVES[diffusion.objective](diffusion)
