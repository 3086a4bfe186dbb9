"""Denoiser networks (plain nn.Modules, no Lightning): ConvNeXt UNet, 2-D toy MLP, and their embeddings.

Every network has `forward(x, t, c=None) -> Tensor` shaped like x, with t the float time it embeds (B,) and c int64
(B,) or None (None = the learned null class). `NETWORKS` registers each one with what it is: its class, its config
class and the `denoiser` config field that holds it, and the kind of x it denoises ("images": (C, H, W) pixels or
latents; "points": vectors of its config's `dim`). Code asks for those properties, never for a name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from model.denoiser.config import ToyMLPConfig, UNetConfig
from model.denoiser.prompted import PromptedNetwork
from model.denoiser.embeddings import ClassEmbedding, TimeEmbedding, sinusoidal_embedding
from model.denoiser.toy import ResidualMLPBlock, ToyMLP
from model.denoiser.unet import ConvNeXtBlock, ConvNeXtUNet, Downsample, SelfAttention2d, Upsample
from model.errors import UserError


@dataclass(frozen=True)
class Network:
    cls: type[nn.Module]
    config_cls: type[Any]
    config_field: str  # the field of the `denoiser` config section that configures it
    kind: Literal["images", "points"]


NETWORKS: dict[str, Network] = {
    "unet": Network(ConvNeXtUNet, UNetConfig, "unet", "images"),
    "toy_mlp": Network(ToyMLP, ToyMLPConfig, "toy", "points"),
}


def build_network(name: str, cfg: Any = None) -> nn.Module:
    """Build the network registered as `name` from `cfg` (an instance of its config class; None = defaults)."""
    if name not in NETWORKS:
        raise UserError(f"unknown denoiser network {name!r}; choose one of {sorted(NETWORKS)}")
    network = NETWORKS[name]
    if cfg is None:
        cfg = network.config_cls()
    if not isinstance(cfg, network.config_cls):
        raise UserError(f"network {name!r} needs a {network.config_cls.__name__}, got {type(cfg).__name__}")
    return network.cls(cfg)


def network_config(den) -> Any:
    """The config of the network a `denoiser` section names (its `unet`, `toy`, ... field)."""
    return getattr(den, NETWORKS[den.network].config_field)


def denoises_points(den) -> bool:
    """Whether the `denoiser` section's network denoises points (vectors) rather than images or latents."""
    return NETWORKS[den.network].kind == "points"


def denoiser_network(cfg, num_classes: int) -> nn.Module:
    """The network `cfg.denoiser.network` names, built from its config for the data's classes and, with
    `denoiser.text` on, for its prompts (wrapped with the byte encoder, which trains with it)."""
    den = cfg.denoiser
    net_cfg = dataclasses.replace(network_config(den), num_classes=num_classes)
    if den.text.on:
        from model.text import ByteTextEncoder, context_width

        net_cfg = dataclasses.replace(net_cfg, context_dim=net_cfg.context_dim or context_width(den.text))
        net = build_network(den.network, net_cfg)
        return PromptedNetwork(net, ByteTextEncoder(den.text)) if den.text.encoder == "bytes" else net
    return build_network(den.network, net_cfg)


def sample_shape(cfg, n: int) -> tuple[int, ...]:
    """The shape of n samples in the denoiser's space: points (dim), latents (C_z, H/f, W/f) or pixels (C, H, W)."""
    den = cfg.denoiser
    if denoises_points(den):
        return (n, network_config(den).dim)
    if den.autoencoder == "vae":
        size = cfg.data.image_size // cfg.vae.net.downsample_factor
        return (n, cfg.vae.net.latent_channels, size, size)
    return (n, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)


__all__ = [
    "NETWORKS",
    "ClassEmbedding",
    "ConvNeXtBlock",
    "ConvNeXtUNet",
    "Downsample",
    "ResidualMLPBlock",
    "SelfAttention2d",
    "TimeEmbedding",
    "ToyMLP",
    "ToyMLPConfig",
    "UNetConfig",
    "Upsample",
    "Network",
    "build_network",
    "denoiser_network",
    "denoises_points",
    "network_config",
    "sample_shape",
    "sinusoidal_embedding",
]
