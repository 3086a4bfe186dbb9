"""Latent against pixel space at the same image size: time per training step and per DDIM sample.

    python -m benchmarks.latent_vs_pixel
    python -m benchmarks.latent_vs_pixel --size 128 --device cuda --sample-batch 64   (GPU)

The denoiser UNet of config/digits.json (random weights) runs once on the latents of the config's VAE (f = 4, 8
channels: 32×32×1 images → 8×8×8 latents) and once, with one input channel, on the pixels (32×32×1): the same width
and depth, only the input differs.

- training step: `benchmarks.common.diffusion_train_step` (q_sample, UNet, v-target MSE, backward, clip, AdamW,
  EMA) on a fixed random batch; latent space with cached latents (the UNet step alone) and with the VAE encoding
  every batch, against pixel space;
- sampling: DDIM-`--steps` from noise, latent space including the VAE decode of the result, against pixel space.

speed-up = pixel time / latent time. The VAE and UNet are untrained: their cost does not depend on the weights.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from benchmarks.common import (Report, build_unet, denoise_of, diffusion_train_step, latent_shape, load_config,
                               make_parser, measure, parse, random_batch, schedule_of)
from model import base
from model.sampling import sample_ddim
from model.errors import UserError, cli_entry

NAME = "latent_vs_pixel"


def parse_args(argv: list[str]):
    # 3 repeats, 1 warm-up: a pixel-space step is seconds on a CPU, and these dominate the run time
    p = make_parser(__doc__.splitlines()[0], repeats=3, warmup=1)
    p.add_argument("--size", type=int, default=32,
                   help="image side (32: the default on CPU; 128 is meant for a GPU, pixel space is minutes there)")
    p.add_argument("--train-batch", type=int, default=64,
                   help="training batch (64: the demo's; a pixel-space step at 32×32 is about 4 s on 2 CPU cores)")
    p.add_argument("--sample-batch", type=int, default=16,
                   help="samples per DDIM call (16: 25 pixel-space UNet calls take about 8 s on 2 CPU cores)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (25: the digits config's sample_steps)")
    return parse(p, argv)


def build_vae(cfg, device: torch.device) -> nn.Module:
    """The config's β-VAE (random weights), frozen."""
    from model.autoencoder import BetaVAE

    return BetaVAE(cfg.vae.net).requires_grad_(False).eval().to(device)


def shapes(cfg, size: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(image shape, latent shape) for `size`, checked against the VAE's factor and the UNet's levels."""
    f, m = cfg.vae.net.downsample_factor, cfg.denoiser.unet.size_multiple
    if size % (f * m):
        raise UserError(f"--size {size} must be divisible by {f * m} (the VAE's factor {f} times the UNet's "
                        f"2**(levels-1) = {m}); try 32 or 128")
    return (cfg.vae.net.in_channels, size, size), latent_shape(cfg, size)


def unet_for(cfg, shape: tuple[int, int, int], device: torch.device) -> nn.Module:
    """The config's UNet (random weights) for inputs of `shape` (C, H, W): latents or pixels."""
    return build_unet(cfg, in_channels=shape[0], size=shape[1]).to(device)


def training(net: nn.Module, x: Tensor, c: Optional[Tensor], schedule: base.Schedule,
             encode: Optional[Callable[[Tensor], Tensor]] = None) -> Callable[[], Tensor]:
    """One training step of `net` on the fixed batch x (encoded first when `encode` is given)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ema = copy.deepcopy(net).requires_grad_(False)

    def step() -> Tensor:
        z0 = x if encode is None else encode(x)
        return diffusion_train_step(net, opt, z0, c, schedule, ema=ema)

    return step


def sampling(net: nn.Module, x_T: Tensor, c: Optional[Tensor], schedule: base.Schedule, steps: int,
             decode: Optional[Callable[[Tensor], Tensor]] = None) -> Callable[[], Tensor]:
    """One DDIM sampling call from x_T (its result decoded when `decode` is given)."""
    def sample() -> Tensor:
        z = sample_ddim(denoise_of(net.eval(), schedule, c), x_T, schedule, steps=steps)
        return z if decode is None else decode(z)

    return sample


def train_rows(args, cfg, schedule, vae, image: tuple, latent: tuple) -> list[dict]:
    device, B, K = args.device, args.train_batch, cfg.denoiser.unet.num_classes
    x_img, c = random_batch((B, *image), K, device)
    z_lat, _ = random_batch((B, *latent), K, device)
    encode = lambda x: vae.encode(x)[0]  # noqa: E731  posterior mean, no grad (frozen)
    fns = {"latent, cached latents": training(unet_for(cfg, latent, device), z_lat, c, schedule),
           "latent, encoding each batch": training(unet_for(cfg, latent, device), x_img, c, schedule, encode),
           "pixel": training(unet_for(cfg, image, device), x_img, c, schedule)}
    res = measure(fns, device, args.warmup, args.repeats)
    pixel = res["pixel"].median
    return [{"space": name, "UNet input": "×".join(map(str, (latent if name != "pixel" else image)[::-1])),
             "batch": B, "ms/step": 1e3 * t.median, "min ms/step": 1e3 * t.min, "ms/image": 1e3 * t.median / B,
             "speed-up vs pixel": pixel / t.median} for name, t in res.items()]


def sample_rows(args, cfg, schedule, vae, image: tuple, latent: tuple) -> list[dict]:
    device, B, K = args.device, args.sample_batch, cfg.denoiser.unet.num_classes
    z_T, c = random_batch((B, *latent), K, device)
    x_T, _ = random_batch((B, *image), K, device)
    fns = {"latent (with decode)": sampling(unet_for(cfg, latent, device), z_T, c, schedule, args.steps, vae.decode),
           "pixel": sampling(unet_for(cfg, image, device), x_T, c, schedule, args.steps)}
    with torch.no_grad():
        res = measure(fns, device, args.warmup, args.repeats)
        decode = measure({"decode": lambda: vae.decode(z_T)}, device, args.warmup, args.repeats)["decode"]
    pixel = res["pixel"].median
    rows = []
    for name, t in res.items():
        rows.append({"space": name, "batch": B, f"DDIM-{args.steps} s/batch": t.median, "min s/batch": t.min,
                     "ms/sample": 1e3 * t.median / B,
                     "of which decode ms/sample": 1e3 * decode.median / B if name != "pixel" else "",
                     "speed-up vs pixel": pixel / t.median})
    return rows


@cli_entry
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if min(args.train_batch, args.sample_batch, args.steps) < 1:
        raise UserError("--train-batch, --sample-batch and --steps must be >= 1")
    cfg = load_config(args.config)
    image, latent = shapes(cfg, args.size)
    schedule = schedule_of(cfg)
    if not 1 <= args.steps <= schedule.T:
        raise UserError(f"--steps must be in [1, T={schedule.T}], got {args.steps}")
    vae = build_vae(cfg, args.device)
    report = Report(NAME, args.device)
    size = f"{args.size}×{args.size}×{image[0]} images, {'×'.join(map(str, latent[::-1]))} latents"
    report.table(f"training step ({size})", train_rows(args, cfg, schedule, vae, image, latent))
    report.table(f"sampling, DDIM-{args.steps} ({size})", sample_rows(args, cfg, schedule, vae, image, latent),
                 note="median of the repeats, the spaces interleaved; speed-up = pixel time / this row's time.")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
