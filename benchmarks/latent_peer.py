"""A diffusers `UNet2DModel` trained on our demo's latents: the same stage 1, another stage 2 (used by
`benchmarks.peer_equal_time`).

The UNet is sized to our denoiser's parameter count (block widths `base`, 2·base, 2·base, one ResNet block per
level, no attention, GroupNorm of up to 16 groups, class embeddings with one extra null class dropped to at our p_uncond). It learns the
v-objective under diffusers' DDPMScheduler (cosine "squaredcos_cap_v2" schedule, 1,000 steps) on the normalised
posterior means of the training images, with AdamW, a 100-step warm-up, the gradient-norm clip at 1 and an EMA of the
weights it samples from; samples come from diffusers' DDIMScheduler (25 "trailing" steps, eta 0) and are decoded by
our VAE.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.errors import UserError

T = 1000


def schedulers():
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError as err:
        raise UserError(f"diffusers is not installed ({err}); pip install -e '.[dev]'") from err
    # clip_sample off: diffusers clips x0 to [-1, 1] by default, which suits pixels, not unit-variance latents
    train = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                          clip_sample=False)
    sample = DDIMScheduler.from_config(train.config, timestep_spacing="trailing")
    return train, sample


def make_unet(latent_shape: tuple[int, int, int], num_classes: int, base: int) -> nn.Module:
    from diffusers import UNet2DModel

    c, h, _ = latent_shape
    return UNet2DModel(sample_size=h, in_channels=c, out_channels=c, block_out_channels=(base, 2 * base, 2 * base),
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, layers_per_block=1,
                       norm_num_groups=math.gcd(16, base), num_class_embeds=num_classes + 1)


@torch.no_grad()
def training_latents(pipe, loader) -> tuple[Tensor, Tensor]:
    """Normalised latents (N, c, h, w) and labels (N,) of every training image, encoded once as our run caches them."""
    from data.captions import batch_parts

    zs, ys = [], []
    for batch in loader:
        x, y, _ = batch_parts(batch)
        zs.append(pipe.encode(x).cpu())
        ys.append(y)
    return torch.cat(zs), torch.cat(ys)


def train(unet: nn.Module, latents: Tensor, labels: Tensor, seconds: float, *, batch_size: int, lr: float,
          p_uncond: float, num_classes: int, seed: int, max_steps: Optional[int] = None) -> tuple[nn.Module, int]:
    """Training steps on random latent batches until `seconds` have passed (or `max_steps` are done); the EMA copy
    and the step count."""
    from benchmarks.common import peer_update

    scheduler, _ = schedulers()
    gen = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    step, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and (max_steps is None or step < max_steps):
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        z0, y = latents[idx], labels[idx]
        y = torch.where(torch.rand(len(y), generator=gen) < p_uncond, num_classes, y)  # the null class
        eps = torch.randn(z0.shape, generator=gen)
        t = torch.randint(T, (len(z0),), generator=gen)
        loss = F.mse_loss(unet(scheduler.add_noise(z0, eps, t), t, class_labels=y).sample,
                          scheduler.get_velocity(z0, eps, t))
        peer_update(unet, ema, opt, loss, step, lr)
        step += 1
    return ema.eval(), step


@torch.no_grad()
def samples(pipe, ema: nn.Module, labels: Tensor, latent_shape: tuple[int, int, int], seed: int,
            batch_size: int = 250) -> Tensor:
    """DDIM-25 samples of `labels` at w = 0 (conditional only), decoded by our VAE: images in [-1, 1] on the CPU."""
    _, scheduler = schedulers()
    scheduler.set_timesteps(25)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for y in labels.split(batch_size):
        z = torch.randn((len(y), *latent_shape), generator=gen)
        for t in scheduler.timesteps:
            z = scheduler.step(ema(z, t, class_labels=y).sample, t, z, eta=0.0).prev_sample
        out.append(pipe.decode(z).cpu())
    return torch.cat(out)
