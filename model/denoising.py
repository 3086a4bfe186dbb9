"""The denoiser wrapper: one plain module that owns everything between a network and a sampler.

A network maps (x_t, t, c) to its output in one parametrisation (eps, x0 or v) and knows no schedule. `Denoiser`
holds that network with the schedule, the parametrisation, the class conditioning (with the null class for
classifier-free guidance), the latent statistics and the sampling options (guidance scale, clip limit), and gives
samplers the only thing they need: `denoise(x_t, t) -> (x0, eps)` (as k-diffusion's and EDM's wrappers do).
Training (the Lightning system), sampling and evaluation (`model.pipeline`) all build one; it imports no Lightning.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from model import base
from model.errors import UserError


def class_condition(y: Tensor, num_classes: int, p_uncond: float = 0.0) -> Optional[Tensor]:
    """Class labels for a network: unlabelled (-1) and, with probability p_uncond, dropped labels become the null
    class (index num_classes, Ho & Salimans 2022); None for an unconditional network."""
    if num_classes == 0:
        return None
    c = torch.where(y < 0, torch.full_like(y, num_classes), y)
    if p_uncond > 0:
        drop = torch.rand(y.shape, device=y.device) < p_uncond
        c = torch.where(drop, torch.full_like(c, num_classes), c)
    return c


def _per_channel(v: Tensor, z: Tensor) -> Tensor:
    return v.view((1, -1) + (1,) * (z.ndim - 2))  # (1, C, 1, ..)


def normalise(z: Tensor, shift: Optional[Tensor], scale: Optional[Tensor]) -> Tensor:
    """z_norm = (z - shift) / scale per channel (the latent normalisation of Rombach et al. 2022, estimated from
    the training latents instead of a fixed factor); identity when shift is None."""
    return z if shift is None else (z - _per_channel(shift, z)) / _per_channel(scale, z)


def denormalise(z: Tensor, shift: Optional[Tensor], scale: Optional[Tensor]) -> Tensor:
    """The inverse of `normalise`: z = z_norm * scale + shift."""
    return z if shift is None else z * _per_channel(scale, z) + _per_channel(shift, z)


class Denoiser(nn.Module):
    """network + schedule + parametrisation + class conditioning + latent statistics → (x0, eps).

    `latent_shift` and `latent_scale` (per channel) define the space the network works in:
    z_norm = (z - shift) / scale; `clip_limit` clamps the predicted x0 in that normalised space.
    """

    def __init__(self, net: Callable, schedule: base.Schedule, parametrisation: base.Parametrisation,
                 num_classes: int = 0, latent_shift: Optional[Tensor] = None,
                 latent_scale: Optional[Tensor] = None) -> None:
        super().__init__()
        base._check_parametrisation(parametrisation)
        self.net = net
        self.schedule = schedule
        self.parametrisation = parametrisation
        self.num_classes = num_classes
        self.register_buffer("latent_shift", latent_shift)
        self.register_buffer("latent_scale", latent_scale)

    @property
    def null_class(self) -> int:
        """The index of the learned null class (= num_classes), the label of unconditional outputs."""
        return self.num_classes

    # ----- the latent space ----------------------------------------------------------------------------------
    def normalise(self, z: Tensor) -> Tensor:
        """Raw latents → the network's space; identity without latent statistics (pixels, points)."""
        return normalise(z, self.latent_shift, self.latent_scale)

    def denormalise(self, z: Tensor) -> Tensor:
        return denormalise(z, self.latent_shift, self.latent_scale)

    # ----- (x_t, t, c) -> (x0, eps) -----------------------------------------------------------------------------
    def forward(self, x_t: Tensor, t: base.TimeLike, c: Optional[Tensor] = None, guidance: float = 0.0,
                clip_limit: Optional[float] = None) -> tuple[Tensor, Tensor]:
        """(x0, eps) at (x_t, t) for labels c (None: the null class), guided by w = `guidance` (Ho & Salimans 2022,
        (1 + w) out(x, c) - w out(x, ∅)) and with x0 clamped to [-clip_limit, clip_limit] (`base.predict_x0_eps`)."""
        net = self.net if guidance == 0.0 else base.classifier_free_guidance(self.net, guidance, self.null_class)
        return base.predict_x0_eps(net, x_t, t, c, self.schedule, self.parametrisation, clip_limit)

    def bind(self, c: Optional[Tensor] = None, guidance: float = 0.0,
             clip_limit: Optional[float] = None) -> base.DenoiseFn:
        """`denoise(x_t, t) -> (x0, eps)` for a sampler, with the labels and options fixed (checked once here)."""
        self.check_options(c, guidance, clip_limit)
        return lambda x_t, t: self(x_t, t, c, guidance, clip_limit)

    def check_options(self, c: Optional[Tensor], guidance: float, clip_limit: Optional[float]) -> None:
        if guidance != 0.0 and self.num_classes == 0:
            raise UserError("--cfg-scale needs a class-conditional model, but this one is unconditional; "
                            "drop --cfg-scale")
        if guidance != 0.0 and c is None:
            raise UserError("classifier-free guidance needs class labels; pass labels or use w = 0")
        if c is not None and self.num_classes and len(c) and not 0 <= int(c.min()) <= int(c.max()) <= self.null_class:
            raise UserError(f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = the null class)")
        base.clip_x0(torch.zeros(1), clip_limit)  # refuses a limit <= 0

    @torch.no_grad()
    def sample(self, x_T: Tensor, labels: Optional[Tensor] = None, *, sampler: str = "ddim",
               steps: Optional[int] = None, eta: float = 0.0, guidance: float = 0.0,
               clip_limit: Optional[float] = None, generator: Optional[torch.Generator] = None,
               t_start: Optional[int] = None, callback: Optional[base.Callback] = None,
               spacing: str = "uniform") -> Tensor:
        """Run `sampler` (a name in base.SAMPLERS) from x_T (pure noise at T, or x_t at t_start); returns the
        normalised x0 (decode latents with the autoencoder after `denormalise`)."""
        c = labels.to(x_T.device) if labels is not None and self.num_classes else None
        return base.sample(sampler, self.bind(c, guidance, clip_limit), x_T, self.schedule, steps=steps,
                           t_start=t_start, eta=eta, generator=generator, callback=callback, spacing=spacing)


@torch.no_grad()
def timestep_losses(net: Callable, z0: Tensor, c: Optional[Tensor], timesteps: list[int], schedule: base.Schedule,
                    parametrisation: base.Parametrisation, loss: str = "l2", min_snr_gamma: Optional[float] = None,
                    seed: int = 0) -> Tensor:
    """The network's per-sample loss on clean z0 at each fixed t, with one noise draw (seeded) for every t.

    Returns (len(timesteps), B). The same noise for every t and every evaluation, so the figures of two checkpoints
    differ only by their networks (sheet 000, 2.2e: the loss of a test set at fixed timesteps).
    """
    eps = torch.randn(z0.shape, generator=torch.Generator(device="cpu").manual_seed(seed)).to(z0)
    full = [torch.full((z0.shape[0],), t, device=z0.device, dtype=torch.long) for t in timesteps]
    return torch.stack([loss_at(net, z0, c, t, eps, schedule, parametrisation, loss, min_snr_gamma) for t in full])


def loss_at(net: Callable, z0: Tensor, c: Optional[Tensor], t: Tensor, eps: Tensor, schedule: base.Schedule,
            parametrisation: base.Parametrisation, loss: str = "l2", min_snr_gamma: Optional[float] = None) -> Tensor:
    """Per-sample diffusion loss (B,) of `net` on x_t = q_sample(z0, t, eps) (L_simple, or min-SNR weighted)."""
    pred = net(base.q_sample(z0, t, eps, schedule), t, c)
    return base.diffusion_loss(pred, z0, eps, t, schedule, parametrisation, loss, min_snr_gamma)
