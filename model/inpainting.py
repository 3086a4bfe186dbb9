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

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from model import base
from model.sampling import SamplerSpec, sample


def latent_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A pixel mask (1, 1, H, W) in {0, 1} → the latent grid (1, 1, h, w): a latent cell is regenerated when any
    pixel it covers is (the known region keeps only cells entirely outside the mask)."""
    return (F.adaptive_max_pool2d(mask.float(), size) > 0).to(mask.dtype)


@torch.no_grad()
def inpaint(denoise, z0: Tensor, mask: Tensor, schedule: base.Schedule, spec: SamplerSpec, *, resample: int = 1,
            generator: Optional[torch.Generator] = None, callback=None) -> Tensor:
    """Regenerate z0 where `mask` (broadcastable to z0, 1 = regenerate) is 1, starting from pure noise at T, with
    any sampler of `spec` (`model.sampling`); resample >= 1 runs each step that many times (1: no resampling; the
    multistep solvers cannot repeat a step). All noise comes from `generator`, so a seed gives the same result."""
    noise = lambda: base.sample_noise(tuple(z0.shape), generator, z0.device, z0.dtype)  # noqa: E731
    x_T = noise()

    def keep_known(x_next: Tensor, level: base.Level) -> Tensor:
        known = z0 if level.is_data else level.alpha * z0 + level.sigma * noise()  # q_sample at the level reached
        return mask * x_next + (1 - mask) * known

    return sample(denoise, x_T, schedule, spec, generator=generator, callback=callback, after_step=keep_known,
                  resample=resample)


def blend(result: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """The original pixels outside the pixel mask, the result inside it (the VAE changes the known region a little;
    this puts it back exactly)."""
    return mask * result + (1 - mask) * image
