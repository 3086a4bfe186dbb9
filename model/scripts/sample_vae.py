"""Inspect a trained beta-VAE: reconstructions, decoded random latents and latent interpolations (sheet 001, ex. 1).

    python -m model.scripts.sample_vae -cfg config/ffhq-beta-vae.json --load runs/ffhq-beta-vae-1/vae/checkpoints/last.ckpt
    python -m model.scripts.sample_vae --load <vae ckpt> --num_samples 16 --seed 3 --output inspect/

The checkpoint carries its config, so the networks are rebuilt from it; `-cfg` only chooses the data whose
validation images are reconstructed (its `data` section; default: the checkpoint's own data section).
Written to the output folder (default: `samples/` beside the checkpoint's `checkpoints/` folder):

- `reconstructions.png`: pairs input | reconstruction of the first N validation images, two columns per pair.
  The reconstruction decodes the posterior mean of q(z|x) and is clamped to [-1, 1].
- `reconstructions.json`: MSE and PSNR of those reconstructions (also printed). Images lie in [-1, 1], so the
  peak-to-peak value is 2 and PSNR = 10·log10(2² / MSE) dB, computed from the MSE over all N images
  (`per_image_mse` / `per_image_psnr` list them per image).
- `random_latents.png`: N images decoded from z ~ N(0, I) of the latent shape (C_z, H/f, W/f), the prior of the
  beta-VAE: a continuous latent space decodes these to plausible images.
- `random_latents_matched.png`: the beta-VAE's aggregate posterior q(z) = E_x q(z|x) is not exactly N(0, I)
  (a small beta lets it drift and shrink), so these N images are decoded from z ~ N(m_c, s_c²) per latent
  channel c, with m_c and s_c² the mean and variance of q(z) moment-matched on up to STATS_IMAGES encoded
  validation images: s_c² = Var(mean of q(z|x)) + E[variance of q(z|x)] (law of total variance).
  The per-channel m_c and s_c go to `latent_stats.json`.
- with `--budget N`: `round_trip_budget.json` (also printed), the error budget of docs/evaluation.md for the VAE
  alone: N real images encoded and decoded (the posterior mean), beside N real images that are not in the reference
  (the floor), on the pixel metrics (Fréchet distance, KID, precision, recall). How close stage 1 lets samples get.
- `interpolation.png`: the decoded path between the posterior means of the first two validation images in
  INTERP_STEPS steps; top row linear interpolation (lerp), bottom row spherical (slerp, Shoemake 1985, as
  proposed for generative models by White 2016, "Sampling Generative Networks").

The same `--seed` gives byte-identical files (the noise is drawn on the CPU from a seeded generator; everything
else is deterministic: eval mode, posterior means).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Optional

import torch
from torch import Tensor

from data.sources import kind_of
from model.errors import ArgParser, UserError, cli_entry
from model.writes import write_text

INTERP_STEPS = 8  # interpolation frames, the two endpoints included
STATS_IMAGES = 256  # validation images encoded to moment-match the aggregate posterior
PEAK_TO_PEAK = 2.0  # images lie in [-1, 1]
MSE_FLOOR = 1e-12  # keeps the PSNR of a perfect reconstruction finite (≈126 dB) so the JSON stays valid


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.sample_vae", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="VAE checkpoint (.ckpt) written by `model.main --train-vae`")
    p.add_argument("-cfg", "--config", default=None,
                   help="JSON config whose data section chooses the images (default: the checkpoint's data)")
    p.add_argument("--num_samples", "--num-samples", type=int, default=8,
                   help="reconstructed validation images and decoded random latents")
    p.add_argument("--seed", type=int, default=0, help="seed of the random latents")
    p.add_argument("--budget", type=int, default=0, metavar="N",
                   help="score the round trip of N real images against the real floor on the pixel metrics (0 = off)")
    p.add_argument("--real-pool", "--real_pool", type=int, default=10_000,
                   help="real images (training and validation) the budget draws its floor and reference from")
    p.add_argument("--output", default=None, help="output folder (default: samples/ beside the run's checkpoints)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--debug", action="store_true")
    return p


def data_config(config_path: Optional[str], ckpt_cfg):
    """The data section of `-cfg` (parsed like the training CLI, only `data` validated), else the checkpoint's.

    Only `data` is instantiated, so a VAE-only config file whose other sections would not pass the
    cross-section checks still works here.
    """
    if config_path is None:
        return ckpt_cfg.data
    from data.config import DataConfig
    from model.cli_config import add_config_arguments, new_parser, one_line, parse

    parser = new_parser("config", "config")
    add_config_arguments(parser)
    ns = parse(parser, ["-cfg", config_path])
    try:
        return DataConfig(**ns["data"].as_dict())
    except UserError:
        raise
    except Exception as err:  # a type jsonargparse let through but the dataclass rejected
        raise UserError(f"{config_path}: {one_line(err)}") from err


def check_data_fits(data, ckpt_cfg, source: str) -> None:
    """The VAE is convolutional: any image size divisible by its factor works; the channels must agree.

    The checkpoint's config with this data section goes through the training CLI's own stage-1 check
    (`Config.__post_init__` runs `check_vae_shapes`).
    """
    if kind_of(data.name) != "images":
        raise UserError(f"the data of {source} ({data.name}) holds {kind_of(data.name)}, not images; pass -cfg with "
                        f"image data")
    try:
        dataclasses.replace(ckpt_cfg, data=data)
    except UserError as err:
        raise UserError(f"the data of {source} does not fit the VAE: {err}") from err


def load_vae(path: str, device: str):
    """(BetaVAE in eval mode on `device`, the checkpoint's Config), rebuilt from the checkpoint alone."""
    from model.autoencoder import BetaVAE
    from model.checkpoint import load_weights, read_checkpoint, state_dict_under
    from model.cli_config import from_dict

    ckpt = read_checkpoint(path, expected="vae")
    cfg = from_dict(ckpt["ldm_config"])
    vae = BetaVAE(cfg.vae.net)
    load_weights(vae, state_dict_under(ckpt, "vae"), path)
    return vae.eval().to(device), cfg


def validation_images(data, count: int) -> Tensor:
    """The first `count` (or all, if fewer) images of the validation split, (K, C, H, W) in [-1, 1], on CPU."""
    from data import make_datamodule

    dm = make_datamodule(data)
    dm.prepare_data()
    dm.setup("fit")
    if dm.val_set is None or len(dm.val_set) == 0:
        raise UserError("the validation split is empty (data.val_fraction is 0); pass a -cfg with "
                        "data.val_fraction > 0")
    batches, have = [], 0
    for x, *_ in dm.val_dataloader():
        batches.append(x[: count - have])
        have += len(batches[-1])
        if have >= count:
            break
    return torch.cat(batches)


@torch.no_grad()
def encode(vae, x: Tensor, batch_size: int, device: str) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) → posterior (mean, logvar), each (N, C_z, h, w), on CPU."""
    parts = [vae.encode(x[i: i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    return torch.cat([m.float().cpu() for m, _ in parts]), torch.cat([lv.float().cpu() for _, lv in parts])


@torch.no_grad()
def decode(vae, z: Tensor, batch_size: int, device: str) -> Tensor:
    """Latents (N, C_z, h, w) → images (N, C, H, W) clamped to [-1, 1], on CPU."""
    parts = [vae.decode(z[i: i + batch_size].to(device)).float().cpu() for i in range(0, len(z), batch_size)]
    return torch.cat(parts).clamp(-1, 1)


def round_trip_budget(vae, data, n: int, pool_size: int, device: str) -> dict:
    """The error budget (model.metrics.budget) of the VAE round trip of n real images, beside the real floor."""
    from data import make_datamodule
    from model.evaluation import pixel_size, real_budget
    from model.metrics.budget import PixelProtocol

    dm = make_datamodule(data)
    bs = data.batch_size
    return real_budget(dm, {}, PixelProtocol(size=pixel_size(dm)), pool_size,
                       lambda x: decode(vae, encode(vae, x, bs, device)[0], bs, device), n=n, flag="--budget")


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB: 10·log10(peak² / MSE), peak = 2 for images in [-1, 1]."""
    return 10.0 * math.log10(PEAK_TO_PEAK ** 2 / max(mse, MSE_FLOOR))


def reconstruction_metrics(x: Tensor, x_hat: Tensor) -> dict:
    per_image = (x_hat - x).pow(2).flatten(1).mean(1)  # (N,)
    mse = float(per_image.mean())
    return {
        "num_images": len(x),
        "mse": mse,
        "psnr": psnr(mse),
        "psnr_definition": "10*log10(2**2 / mse) dB; images and clamped reconstructions in [-1, 1]",
        "per_image_mse": [float(v) for v in per_image],
        "per_image_psnr": [psnr(float(v)) for v in per_image],
    }


def interleave_pairs(x: Tensor, x_hat: Tensor) -> Tensor:
    """(N, C, H, W) twice → (2N, C, H, W) ordered x0, x̂0, x1, x̂1, … so a grid shows pairs side by side."""
    return torch.stack([x, x_hat], dim=1).flatten(0, 1)


def aggregate_posterior_moments(mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of q(z) = E_x q(z|x) from posteriors (N, C_z, h, w): law of total variance."""
    m = mean.mean(dim=(0, 2, 3))  # (C_z,)
    var = mean.var(dim=(0, 2, 3), unbiased=False) + logvar.exp().mean(dim=(0, 2, 3))  # (C_z,)
    return m, var.sqrt()


def lerp(z0: Tensor, z1: Tensor, alpha: Tensor) -> Tensor:
    """(1 − α)·z0 + α·z1 for each α: z (C_z, h, w), alpha (S,) → (S, C_z, h, w)."""
    a = alpha.view(-1, 1, 1, 1)
    return (1 - a) * z0 + a * z1


def slerp(z0: Tensor, z1: Tensor, alpha: Tensor) -> Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for latents) on the flattened latents.

    slerp(z0, z1; α) = sin((1 − α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1, cos θ = ⟨z0, z1⟩ / (|z0| |z1|);
    falls back to lerp when z0 and z1 are (anti-)parallel, where sin θ → 0.
    """
    cos = torch.dot(z0.flatten(), z1.flatten()) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(torch.sin(theta)) < 1e-6:
        return lerp(z0, z1, alpha)
    a = alpha.view(-1, 1, 1, 1)
    return (torch.sin((1 - a) * theta) * z0 + torch.sin(a * theta) * z1) / torch.sin(theta)


def grid_columns(n: int) -> int:
    """Images (or pairs) per grid row: a roughly square grid."""
    return max(1, int(math.ceil(math.sqrt(n))))


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    if args.num_samples <= 0:
        raise UserError(f"--num_samples must be > 0, got {args.num_samples}")
    if args.budget < 0 or args.real_pool < 2:
        raise UserError(f"--budget must be >= 0 (0 = off) and --real-pool >= 2, got {args.budget} and {args.real_pool}")
    from model.images import save_grid
    from model.scripts.common import output_folder, resolve_device

    device = resolve_device(args.device)
    vae, ckpt_cfg = load_vae(args.load, device)
    data = data_config(args.config, ckpt_cfg)
    check_data_fits(data, ckpt_cfg, args.config or f"the checkpoint {args.load}")
    budget = round_trip_budget(vae, data, args.budget, args.real_pool, device) if args.budget else None  # may refuse
    out = output_folder(args.output, args.load, "samples")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = False  # the same algorithms every run, for identical files
        torch.backends.cudnn.deterministic = True
    n, bs = args.num_samples, data.batch_size

    images = validation_images(data, max(n, 2, STATS_IMAGES))  # (K, C, H, W)
    if len(images) < 2:
        raise UserError("the validation split holds fewer than 2 images, too few to interpolate; raise "
                        "data.val_fraction or data.max_items")
    mean, logvar = encode(vae, images, bs, device)  # 2 × (K, C_z, h, w)

    # reconstructions of the first N validation images (posterior mean)
    k = min(n, len(images))
    x, x_hat = images[:k], decode(vae, mean[:k], bs, device)
    save_grid(interleave_pairs(x, x_hat), out / "reconstructions.png", nrow=2 * grid_columns(k))
    metrics = reconstruction_metrics(x, x_hat)
    write_text(out / "reconstructions.json", json.dumps(metrics, indent=2) + "\n")
    note = f" (the validation split has only {k})" if k < n else ""
    print(f"reconstructions of {k} validation images{note}: MSE {metrics['mse']:.5f}, PSNR {metrics['psnr']:.2f} dB")

    # decoded random latents: the prior N(0, I), then N(m_c, s_c²) moment-matched to the aggregate posterior
    gen = torch.Generator().manual_seed(args.seed)
    shape = (n, *mean.shape[1:])  # (N, C_z, h, w)
    z_prior = torch.randn(shape, generator=gen)
    save_grid(decode(vae, z_prior, bs, device), out / "random_latents.png", nrow=grid_columns(n))
    m, s = aggregate_posterior_moments(mean, logvar)
    z_matched = m.view(1, -1, 1, 1) + s.view(1, -1, 1, 1) * torch.randn(shape, generator=gen)
    save_grid(decode(vae, z_matched, bs, device), out / "random_latents_matched.png", nrow=grid_columns(n))
    stats = {"num_images": len(images), "latent_shape": list(mean.shape[1:]),
             "channel_mean": m.tolist(), "channel_std": s.tolist()}
    write_text(out / "latent_stats.json", json.dumps(stats, indent=2) + "\n")
    print(f"aggregate posterior over {len(images)} validation images, per channel: mean "
          f"[{', '.join(f'{v:.3f}' for v in m.tolist())}], std [{', '.join(f'{v:.3f}' for v in s.tolist())}]")

    # interpolation between the first two validation images: row 1 lerp, row 2 slerp
    alpha = torch.linspace(0, 1, INTERP_STEPS)
    path = torch.cat([lerp(mean[0], mean[1], alpha), slerp(mean[0], mean[1], alpha)])  # (2S, C_z, h, w)
    save_grid(decode(vae, path, bs, device), out / "interpolation.png", nrow=INTERP_STEPS)
    print(f"wrote reconstructions.png, random_latents.png, random_latents_matched.png and interpolation.png "
          f"(seed {args.seed}) to {out}")
    if budget is not None:
        from model.metrics.budget import as_text

        write_text(out / "round_trip_budget.json", json.dumps(budget, indent=2) + "\n")
        print(as_text(budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
