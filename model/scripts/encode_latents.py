"""Encode a data set's training and validation splits once with a trained VAE, into shards of latents on disk.

    python -m model.scripts.encode_latents -cfg config/ffhq-denoiser.json --load-vae <vae ckpt> --output latents/ffhq
    python -m model.main -cfg config/ffhq-denoiser.json --train-denoiser --load-vae <vae ckpt> \
        --data.name latents --data.root latents/ffhq

Each split is encoded without augmentation (the posterior means, as `cache_latents` does) in batches of the
denoiser stage's batch size, and written in shards of `--shard-size` items; `--hflip` also encodes the mirrored
training images (twice the training items, the flip fixed per item instead of drawn per epoch). meta.json keeps
the VAE's digest and config, the image data config and the training latents' per-channel mean and std
(data/latents.py). A denoiser trained on them refuses another VAE in one line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from data.sources import kind_of
from model.errors import UserError, cli_entry


def make_parser():
    from model.cli_config import add_config_arguments, new_parser

    p = new_parser("python -m model.scripts.encode_latents", "Encode a data set's splits once into latents on disk.")
    add_config_arguments(p)
    p.add_argument("--load-vae", required=True, help="the stage-1 checkpoint (.ckpt) that encodes")
    p.add_argument("--output", required=True, help="the latents folder (data.root for data.name latents)")
    p.add_argument("--hflip", action="store_true", help="also encode the horizontally flipped training images")
    p.add_argument("--shard-size", type=int, default=4096, help="items per shard file")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


@torch.no_grad()
def encode_batches(vae, dataset, batch_size: int, device: str, flip: bool) -> Iterator[tuple]:
    """(z, y, captions) per batch on the CPU: the posterior mean of each (optionally mirrored) image, its label and
    its caption (an empty list without data.captions)."""
    for x, y, *texts in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = x.flip(-1) if flip else x
        yield vae.encode(x.to(device))[0].float().cpu(), y, list(texts[0]) if texts else []


def write_split(out: Path, name: str, batches, shard_size: int, stats: torch.Tensor | None) -> list[dict]:
    """Shards `<name>-<k>.pt` of at most shard_size items ({"z", "y"} and, with captions, "text": the caption of
    every item, which the denoiser tokenizes as it reads them); adds (count, sum, sum of squares) per channel to
    stats."""
    from model.checkpoint import atomic_torch_save

    shards = []
    pending_z, pending_y, pending_text = torch.empty(0), torch.empty(0, dtype=torch.long), []

    def write(z: torch.Tensor, y: torch.Tensor, text: list[str]) -> None:
        file = f"{name}-{len(shards):05d}.pt"
        atomic_torch_save({"z": z.contiguous(), "y": y.clone(), **({"text": text} if text else {})}, out / file)
        shards.append({"file": file, "items": len(z)})

    for z, y, text in batches:
        if stats is not None:
            flat = z.double().transpose(0, 1).flatten(1)  # (C, B*h*w)
            stats += torch.stack([torch.full_like(flat[:, 0], flat.shape[1]), flat.sum(1), flat.pow(2).sum(1)])
        pending_z = torch.cat([pending_z, z]) if len(pending_z) else z
        pending_y = torch.cat([pending_y, y])
        pending_text += text
        while len(pending_z) >= shard_size:
            write(pending_z[:shard_size], pending_y[:shard_size], pending_text[:shard_size])
            pending_z, pending_y, pending_text = pending_z[shard_size:], pending_y[shard_size:], pending_text[shard_size:]
    if len(pending_z):
        write(pending_z, pending_y, pending_text)
    return shards


@cli_entry
def main(argv: list[str]) -> int:
    from model.cli_config import build_config, parse
    from model.config import check_vae_shapes, to_dict
    from model.scripts.common import held_out, resolve_device
    from model.scripts.sample_vae import load_vae
    from model.checkpoint import weights_digest
    from model.writes import check_writable, write_text

    parser = make_parser()
    args = parse(parser, argv)
    if args.shard_size <= 0:
        raise UserError(f"--shard-size must be > 0, got {args.shard_size}")
    cfg = build_config(parser, args)
    if kind_of(cfg.data.name) != "images":
        raise UserError(f"encode_latents reads images; data.name {cfg.data.name} holds {kind_of(cfg.data.name)}")
    device = resolve_device(args.device)
    vae, vae_cfg = load_vae(args.load_vae, device)
    cfg.vae = vae_cfg.vae
    check_vae_shapes(cfg)
    out = Path(args.output)
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--output {out} is not empty; pick a new folder for the latents")
    dm = held_out(cfg.data)
    check_writable(out)
    batch = cfg.denoiser.trainer.batch_size or cfg.data.batch_size  # the stage's: as cache_latents encodes
    stats = torch.zeros(3, vae_cfg.vae.net.latent_channels, dtype=torch.float64)
    train = dm.split_items("train")
    shards = write_split(out, "train", encode_batches(vae, train, batch, device, False), args.shard_size, stats)
    if args.hflip:
        shards += write_split(out, "train-flip", encode_batches(vae, train, batch, device, True), args.shard_size,
                              stats)
    val = write_split(out, "val", encode_batches(vae, dm.split_items("val"), batch, device, False), args.shard_size,
                      None)
    n, s, s2 = stats
    mean = s / n
    std = (s2 / n - mean.pow(2)).clamp_min(1e-12).sqrt()
    f = vae_cfg.vae.net.downsample_factor
    meta = {"format": "latent-diffusion-lightning/latents-1", "vae_checkpoint": str(args.load_vae),
            "vae_digest": weights_digest(vae), "vae": to_dict(vae_cfg)["vae"], "data": to_dict(cfg)["data"],
            "class_names": list(dm.class_names), "hflip": args.hflip, "captions": cfg.data.captions,
            "latent_shape": [vae_cfg.vae.net.latent_channels, cfg.data.image_size // f, cfg.data.image_size // f],
            "stats": {"mean": mean.tolist(), "std": std.tolist()},
            "splits": {"train": {"shards": shards, "items": sum(s["items"] for s in shards)},
                       "val": {"shards": val, "items": sum(s["items"] for s in val)}}}
    write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    print(f"encoded {meta['splits']['train']['items']} training and {meta['splits']['val']['items']} validation "
          f"items of {cfg.data.name} into {len(shards) + len(val)} shards of {tuple(meta['latent_shape'])} latents "
          f"in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
