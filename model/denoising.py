"""The denoiser wrapper: one plain module that owns everything between a network and a sampler.

A network maps (x_t, t, c) to its output in one parametrisation (eps, x0 or v) and knows no schedule. `Denoiser`
holds that network with the schedule, the parametrisation, the class conditioning (with the null class for
classifier-free guidance), the latent statistics and the sampling options (guidance scale, clip limit), and gives
samplers the only thing they need: `denoise(x_t, level) -> (x0, eps)` (as k-diffusion's and EDM's wrappers do).
Training (the Lightning system), sampling and evaluation (`model.pipeline`) all build one; it imports no Lightning.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from model import base
from model.conditioning import AnyCondition, Condition, class_condition, labels_of  # noqa: F401 (re-exported)
from model.objectives import VP
from model.sampling import sample as run_spec


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
                 latent_scale: Optional[Tensor] = None, objective=None, guide: Optional[Callable] = None) -> None:
        """`objective` (`model.objectives`, e.g. from_config) defaults to the VP process of `schedule` with a
        `parametrisation` network; another objective brings its own table, which replaces `schedule`. `guide` is
        the weaker network autoguidance steps away from (the EMA weights of an early step), None without one."""
        super().__init__()
        self.objective = objective if objective is not None else VP(schedule, parametrisation)
        self.net = net
        self.guide = guide
        self.schedule = self.objective.table
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

    # ----- (x_t, level, c) -> (x0, eps) -------------------------------------------------------------------------
    def forward(self, x_t: Tensor, t: Union[base.Level, base.TimeLike], c: AnyCondition = None,
                guidance: float = 0.0, clip_limit: Optional[float] = None,
                guidance_rescale: float = 0.0, uncond: AnyCondition = None,
                autoguidance: float = 0.0) -> tuple[Tensor, Tensor]:
        """(x0, eps) at (x_t, t) for the condition c (labels or a `Condition`; None: the null class), guided by
        w = `guidance` (Ho & Salimans 2022, (1 + w) out(x, c) - w out(x, uncond), uncond the null class unless given:
        a prompt model's empty or negative prompt; rescaled by φ = `guidance_rescale`, Lin et al. 2024) and with x0
        clamped to [-clip_limit, clip_limit]. `autoguidance` a > 0 first steps the network away from its guide
        (`base.autoguidance`); classifier-free guidance then mixes that network's two conditions.

        t is a noise level of a sampling grid (the network embeds its float time), a step of the table (an int), or
        one step per sample (an int tensor (B,), as in training)."""
        net = self.autoguided(autoguidance)
        if guidance != 0.0:
            net = base.classifier_free_guidance(net, guidance, self.null_class, guidance_rescale, uncond)
        if isinstance(t, Tensor):
            if not isinstance(self.objective, VP):
                raise ValueError("one step per sample is the VP objective's; give a noise level (base.Level)")
            return base.predict_x0_eps(net, x_t, t, c, self.schedule, self.objective.parametrisation, clip_limit)
        level = t if isinstance(t, base.Level) else self.schedule.level_at_step(int(t))
        x0, eps = self.objective.predict(net, x_t, level, c)
        return base._clipped(x0, eps, x_t, level.ab, clip_limit)

    def autoguided(self, weight: float) -> Callable:
        """The network stepped away from the guide by `weight` (itself at 0); refused without a guide."""
        if weight != 0.0 and self.guide is None:
            raise ValueError(f"autoguidance {weight:g} needs a guide network, and this Denoiser has none")
        return base.autoguidance(self.net, self.guide, weight)

    def bind(self, c: AnyCondition = None, guidance: float = 0.0, clip_limit: Optional[float] = None,
             guidance_at: Optional[Callable[[float], float]] = None, guidance_rescale: float = 0.0,
             uncond: AnyCondition = None, autoguidance: float = 0.0) -> Callable:
        """`denoise(x_t, level) -> (x0, eps)` for a sampler, with the labels and options fixed (checked once here);
        `guidance_at(σ)` replaces the constant scale where guidance depends on the noise level (an interval)."""
        self.check_options(c, guidance, clip_limit)
        self.autoguided(autoguidance)  # refuses a weight without a guide before any step
        encode = getattr(self.net, "encode_prompt", None)  # a network with its own prompt encoder: encode once
        if encode is not None:
            c, uncond = encode(c), encode(uncond)
        if guidance_at is None:
            return lambda x_t, t: self(x_t, t, c, guidance, clip_limit, guidance_rescale, uncond, autoguidance)

        def denoise(x_t: Tensor, level: base.Level) -> tuple[Tensor, Tensor]:
            return self(x_t, level, c, guidance_at(level.sigma_ve), clip_limit, guidance_rescale, uncond,
                        autoguidance)

        return denoise

    def check_options(self, c: AnyCondition, guidance: float, clip_limit: Optional[float]) -> None:
        prompted = isinstance(c, Condition) and (c.tokens is not None or c.context is not None)
        if guidance != 0.0 and self.num_classes == 0 and not prompted:
            raise ValueError("guidance needs a conditional model, but this one is unconditional; use w = 0")
        if guidance != 0.0 and c is None:
            raise ValueError("classifier-free guidance needs class labels; pass labels or use w = 0")
        labels = labels_of(c)
        if labels is not None and self.num_classes and len(labels) and \
                not 0 <= int(labels.min()) <= int(labels.max()) <= self.null_class:
            raise ValueError(f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = the null class)")
        base.clip_x0(torch.zeros(1), clip_limit)  # refuses a limit <= 0

    def bind_spec(self, c: AnyCondition, spec, device: torch.device, uncond: AnyCondition = None) -> Callable:
        """`bind` with the guidance, its interval, the autoguidance and the clip limit of a `SamplerSpec`; bare
        labels are dropped for a model without classes."""
        if isinstance(c, Tensor) and not self.num_classes:
            c = None
        c, uncond = (None if v is None else v.to(device) for v in (c, uncond))
        interval = spec.guides_at if spec.guidance_interval is not None else None
        return self.bind(c, spec.guidance, spec.clip_limit, guidance_at=interval,
                         guidance_rescale=spec.guidance_rescale, uncond=uncond, autoguidance=spec.autoguidance)

    @torch.no_grad()
    def sample(self, x_T: Tensor, c: AnyCondition, spec, *, generator: Optional[torch.Generator] = None,
               k_start: Optional[int] = None, callback=None, after_step=None, resample: int = 1,
               uncond: AnyCondition = None) -> Tensor:
        """Run `spec` (a `model.sampling.SamplerSpec`) from x_T (pure noise at T, or x_t at the table's step
        k_start) for the condition c (labels, or a `Condition` with its unconditional `uncond` for guidance);
        returns the normalised x0 (decode latents with the autoencoder after `denormalise`)."""
        return run_spec(self.bind_spec(c, spec, x_T.device, uncond), x_T, self.schedule, spec, k_start=k_start,
                      generator=generator, callback=callback, after_step=after_step, resample=resample)


@torch.no_grad()
def timestep_losses(net: Callable, z0: Tensor, c: Optional[Tensor], timesteps: list[int], objective,
                    seed: int = 0) -> Tensor:
    """The network's per-sample loss on clean z0 at each fixed step of the objective's table, with one noise draw
    (seeded) for every step.

    Returns (len(timesteps), B). The same noise for every t and every evaluation, so the figures of two checkpoints
    differ only by their networks (sheet 000, 2.2e: the loss of a test set at fixed timesteps).
    """
    eps = torch.randn(z0.shape, generator=torch.Generator(device="cpu").manual_seed(seed)).to(z0)
    return torch.stack([objective.loss(net, z0, c, objective.at_step(k, z0.shape[0], z0.device), eps)
                        for k in timesteps])
