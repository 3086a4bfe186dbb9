"""Masked inpainting in latent space: regenerate where the mask is 1, keep the rest of the image.

At every reverse step the known region is put back at the noise level of the step's target time, from the encoded
image z0 (Lugmayr et al. 2022, eq. 8, as latent diffusion does it: Avrahami et al. 2023), so the generated region
is denoised in the context of the known one:

    x_next = m ⊙ step(x_t, t → t_next) + (1 − m) ⊙ q_sample(z0, t_next, ε'),    x_next = z0 outside m at t_next = 0.

RePaint's resampling (Lugmayr et al. 2022, Alg. 1, jump length 1) repeats each step `resample` times, diffusing the
merged x_next back to t in between, x_t = sqrt(ab_t / ab_next) x_next + sqrt(1 − ab_t / ab_next) z, which lets the
generated region agree better with the known one.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from model import base
from model.errors import UserError


def latent_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A pixel mask (1, 1, H, W) in {0, 1} → the latent grid (1, 1, h, w): a latent cell is regenerated when any
    pixel it covers is (the known region keeps only cells entirely outside the mask)."""
    return (F.adaptive_max_pool2d(mask.float(), size) > 0).to(mask.dtype)


@torch.no_grad()
def inpaint(denoise: base.DenoiseFn, z0: Tensor, mask: Tensor, schedule: base.Schedule, *, sampler: str = "ddpm",
            steps: Optional[int] = None, resample: int = 1, generator: Optional[torch.Generator] = None,
            callback: Optional[base.Callback] = None) -> Tensor:
    """Regenerate z0 where `mask` (broadcastable to z0, 1 = regenerate) is 1, starting from pure noise at T.

    sampler: "ddpm" (every step unless `steps`) or "ddim" (eta 0, `steps`); resample >= 1 runs each step that many
    times (1: no resampling). All noise comes from `generator`, so a seed gives the same result.
    """
    if sampler not in ("ddpm", "ddim"):
        raise UserError(f"inpainting runs with ddpm or ddim, got {sampler!r}; pass --sampler ddpm or ddim")
    if resample < 1:
        raise UserError(f"--resample-steps must be >= 1 (1 = no resampling), got {resample}")
    times = base.timesteps_ddpm(schedule.T, steps) if sampler == "ddpm" else base.timesteps_ddim(schedule.T, steps)
    noise = lambda: base.sample_noise(tuple(z0.shape), generator, z0.device, z0.dtype)  # noqa: E731
    x = noise()
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        for r in range(resample):
            x0, eps = denoise(x, t)
            if sampler == "ddpm":
                x_next = base.ddpm_step(x, t, t_next, x0, schedule, generator=generator)
            else:
                x_next = base.ddim_step(x, t, t_next, x0, eps, schedule)
            known = z0 if t_next == 0 else base.q_sample(z0, t_next, noise(), schedule)
            x_next = mask * x_next + (1 - mask) * known
            if r < resample - 1 and t_next > 0:  # back to t: x_t ~ q(x_t | x_next)
                a = float(schedule.alpha_bar[t] / schedule.alpha_bar[t_next])
                x = math.sqrt(a) * x_next + math.sqrt(1.0 - a) * noise()
        x = x_next
        if callback is not None:
            callback(i, t_next, x, x0)
    return x


def blend(result: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """The original pixels outside the pixel mask, the result inside it (the VAE changes the known region a little;
    this puts it back exactly)."""
    return mask * result + (1 - mask) * image
