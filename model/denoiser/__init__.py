"""Denoiser networks (plain nn.Modules, no Lightning): ConvNeXt UNet, 2-D toy MLP, and their embeddings.

Every network has `forward(x, t, c=None) -> Tensor` shaped like x, with t int64 (B,) and c int64 (B,) or None
(None = the learned null class). `NETWORKS` maps a config name to (network class, config class).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from model.denoiser.config import ToyMLPConfig, UNetConfig
from model.denoiser.embeddings import ClassEmbedding, TimeEmbedding, sinusoidal_embedding
from model.denoiser.toy import ResidualMLPBlock, ToyMLP
from model.denoiser.unet import ConvNeXtBlock, ConvNeXtUNet, SelfAttention2d
from model.errors import UserError

NETWORKS: dict[str, tuple[type[nn.Module], type[Any]]] = {
    "unet": (ConvNeXtUNet, UNetConfig),
    "toy_mlp": (ToyMLP, ToyMLPConfig),
}


def build_network(name: str, cfg: Any = None) -> nn.Module:
    """Build the network registered as `name` from `cfg` (an instance of its config class; None = defaults)."""
    if name not in NETWORKS:
        raise UserError(f"unknown denoiser network {name!r}; choose one of {sorted(NETWORKS)}")
    network_cls, config_cls = NETWORKS[name]
    if cfg is None:
        cfg = config_cls()
    if not isinstance(cfg, config_cls):
        raise UserError(f"network {name!r} needs a {config_cls.__name__}, got {type(cfg).__name__}")
    return network_cls(cfg)


__all__ = [
    "NETWORKS",
    "ClassEmbedding",
    "ConvNeXtBlock",
    "ConvNeXtUNet",
    "ResidualMLPBlock",
    "SelfAttention2d",
    "TimeEmbedding",
    "ToyMLP",
    "ToyMLPConfig",
    "UNetConfig",
    "build_network",
    "sinusoidal_embedding",
]
