"""Every shipped config parses, validates, and builds networks whose shapes fit its data."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from model.autoencoder import BetaVAE
from model.cli_config import add_config_arguments, build_config, from_dict, new_parser, parse
from model.conditioning import Conditioner
from model.config import check_denoiser_shapes, to_dict
from model.denoiser import denoiser_network
from model.text import prompt_encoder

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.json"))


@functools.cache  # building the parser costs more than parsing a file with it, and parsing leaves it unchanged
def config_parser():
    parser = new_parser("test", "test")
    add_config_arguments(parser)
    return parser


def load(path: Path):
    parser = config_parser()
    return build_config(parser, parse(parser, ["-cfg", str(path)]))


def is_vae_only(path: Path) -> bool:
    return path.stem.endswith("beta-vae")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_and_shapes_fit(path, monkeypatch):
    cfg = load(path)
    assert cfg.name == path.stem  # the run folder is named after the file
    monkeypatch.setattr("model.cli_config._CHECKED", {})  # check the dict itself, not a remembered Config
    assert from_dict(to_dict(cfg)) == cfg  # what lets a training system keep its Config unchecked (checked_dict)
    torch.manual_seed(0)
    if cfg.data.name == "toy2d":
        check_denoiser_shapes(cfg)
        net = denoiser_network(cfg, num_classes=0)
        x = torch.randn(3, cfg.denoiser.toy.dim)
        assert net(x, torch.tensor([1, 5, 9])).shape == x.shape
        return
    size = cfg.data.image_size
    x = torch.rand(1, cfg.data.channels, size, size) * 2 - 1  # (B, C, H, W) in [-1, 1]
    vae = BetaVAE(cfg.vae.net).eval()
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        f = cfg.vae.net.downsample_factor
        assert mean.shape == (1, cfg.vae.net.latent_channels, size // f, size // f)
        if is_vae_only(path):
            assert vae.decode(mean).shape == x.shape
            return
        check_denoiser_shapes(cfg)
        net = denoiser_network(cfg, num_classes=cfg.denoiser.unet.num_classes)
        z = mean if cfg.denoiser.autoencoder == "vae" else x
        labels = torch.zeros(1, dtype=torch.long) if cfg.denoiser.unet.num_classes else None
        conditioner = Conditioner(cfg.denoiser.unet.num_classes, prompt_encoder(cfg.denoiser.text))
        c = conditioner(labels, ["a red heart"] if conditioner.prompted else None, 1)
        assert net(z, torch.tensor([cfg.denoiser.diffusion.T]), c).shape == z.shape


def test_sheet_ddim_config_differs_only_in_sampling():
    """ffhq-ddim.json is ffhq-denoiser.json with DDIM sampling defaults (sheet 001, ex. 4)."""
    ddpm, ddim = load(CONFIGS[0].parent / "ffhq-denoiser.json"), load(CONFIGS[0].parent / "ffhq-ddim.json")
    assert ddpm.denoiser.unet == ddim.denoiser.unet and ddpm.vae == ddim.vae and ddpm.data == ddim.data
    assert (ddpm.denoiser.diffusion.sampler, ddim.denoiser.diffusion.sampler) == ("ddpm", "ddim")
