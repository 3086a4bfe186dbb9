"""Convolutional beta-VAE: ResNet encoder -> diagonal Gaussian q(z|x) -> ResNet decoder.

Higgins et al. (2017), beta-VAE; the encoder/decoder layout follows the first-stage autoencoder of
Rombach et al. (2022) (ResNet blocks with GroupNorm + SiLU, stride-2 conv down, nearest-upsample + conv up),
without attention to stay small. The latent has `latent_channels` channels and 1/f of the image's height and
width, f = 2 ** (len(channel_mult) - 1).

Decoder output is NOT squashed (no tanh): targets lie in [-1, 1], but tanh saturates exactly where many pixels
live (black/white backgrounds at -1/+1), which flattens the gradients there; the L1/MSE/SSIM losses already pull
the output into range. Callers that need valid images clamp, `x_hat.clamp(-1, 1)`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from model.autoencoder.config import VAEConfig
from model.errors import UserError

# log-variance range of q(z|x), as in Rombach et al.'s DiagonalGaussianDistribution: exp(20) ~ 5e8 keeps
# exp(logvar) and exp(0.5 * logvar) finite in float32 (and half precision after scaling), exp(-30) ~ 1e-13
# keeps log sigma^2 in the KL finite, so a badly initialised or diverging encoder cannot produce inf/NaN.
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 conv on the skip path when the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(groups, c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)  # (B, c_out, H, W)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv (no checkerboard artefacts): (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, 2 * latent_channels, H/f, W/f): the mean and log-variance, stacked."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths, g = cfg.widths, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        c = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, width, g))
                c = width
            if level < cfg.levels - 1:
                blocks.append(Downsample(c))  # halves H and W
        self.down = nn.Sequential(*blocks)
        self.mid = ResBlock(c, c, g)
        self.out = nn.Sequential(nn.GroupNorm(g, c), nn.SiLU(), nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, widths[0], H, W)
        h = self.mid(self.down(h))  # (B, widths[-1], H/f, W/f)
        return self.out(h)  # (B, 2 * C_z, H/f, W/f)


class Decoder(nn.Module):
    """(B, latent_channels, H/f, W/f) -> (B, in_channels, H, W), unsquashed (see the module docstring)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths, g = cfg.widths, cfg.norm_groups
        c = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        self.mid = ResBlock(c, c, g)
        blocks: list[nn.Module] = []
        for level in reversed(range(cfg.levels)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, widths[level], g))
                c = widths[level]
            if level > 0:
                blocks.append(Upsample(c))  # doubles H and W
        self.up = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.GroupNorm(g, c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, widths[-1], H/f, W/f)
        h = self.up(h)  # (B, widths[0], H, W)
        return self.out(h)  # (B, in_channels, H, W)


class BetaVAE(nn.Module):
    """beta-VAE with a diagonal Gaussian posterior q(z|x) = N(mean, exp(logvar)) and prior N(0, I).

    `forward` returns (x_hat, mean, logvar, z); z is a reparameterised sample in training mode and the
    posterior mean in eval mode (deterministic reconstructions and latents for the diffusion stage).
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def downsample_factor(self) -> int:
        return self.cfg.downsample_factor

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) in [-1, 1] -> (mean, logvar), each (B, C_z, H/f, W/f); logvar clamped."""
        self._check_input(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # 2 x (B, C_z, H/f, W/f)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @staticmethod
    def reparameterise(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2014, eq. 10); differentiable."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, C_z, h, w) -> images (B, C, h*f, w*f), not clamped."""
        return self.decoder(z)

    def forward(
        self, x: Tensor, sample: bool | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, C, H, W) -> (x_hat (B, C, H, W), mean, logvar, z (each (B, C_z, H/f, W/f))).

        sample=None samples z in training mode and uses the mean in eval mode; True/False force either.
        """
        mean, logvar = self.encode(x)
        if sample is None:
            sample = self.training
        z = self.reparameterise(mean, logvar, generator) if sample else mean
        return self.decode(z), mean, logvar, z

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise UserError(
                f"the VAE expects images of shape (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}; "
                f"set vae.net.in_channels to the data's channels"
            )
        f = self.cfg.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise UserError(
                f"image size {x.shape[-2]}x{x.shape[-1]} is not divisible by the VAE downsampling factor {f}; "
                f"change data.image_size or vae.net.channel_mult"
            )
