"""Stage 1 of latent diffusion: the beta-VAE (networks, KL, beta schedule, reconstruction losses)."""
from model.autoencoder.config import DiscConfig, LossConfig, VAEConfig
from model.autoencoder.kl import beta_at, kl_divergence
from model.autoencoder.losses import (
    ReconstructionLoss,
    l1_loss,
    mse_loss,
    rgb_to_ycbcr,
    ssim_loss,
    ycbcr_loss,
)
from model.autoencoder.networks import BetaVAE, Decoder, Encoder
from model.autoencoder.perceptual import BACKBONE_FILES, backbone_cache_path, build_lpips

__all__ = [
    "BACKBONE_FILES",
    "BetaVAE",
    "Decoder",
    "DiscConfig",
    "Encoder",
    "LossConfig",
    "ReconstructionLoss",
    "VAEConfig",
    "backbone_cache_path",
    "beta_at",
    "build_lpips",
    "kl_divergence",
    "l1_loss",
    "mse_loss",
    "rgb_to_ycbcr",
    "ssim_loss",
    "ycbcr_loss",
]
