"""Typed configs of the beta-VAE (network + beta schedule) and of its reconstruction loss.

Plain dataclasses with simple field types so jsonargparse can map JSON onto them; `__post_init__`
rejects out-of-range values with a one-line `UserError` naming the dotted key (as nested in
`model.config.Config`: `vae.net.*` and `vae.loss.*`) and the fix.

Sheet 001's FFHQ autoencoder (128x128 RGB, 8 latent channels, f = 8) is
`VAEConfig(in_channels=3, channel_mult=[1, 2, 2, 4], latent_channels=8)`: latents of shape (8, 16, 16).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from model.errors import UserError

LPIPS_NETS = ("alex", "vgg", "squeeze")


def _check(ok: bool, message: str) -> None:
    """Raise `UserError(message)` unless `ok`; `message` is one line: key, what is wrong, how to fix."""
    if not ok:
        raise UserError(message)


@dataclass
class VAEConfig:
    """Convolutional beta-VAE. Level i has width `base_channels * channel_mult[i]`; the encoder halves the
    resolution between consecutive levels, so the downsampling factor is f = 2 ** (len(channel_mult) - 1).

    The KL weight follows beta(step) = max(beta_min, beta_start * kl_factor ** (step / beta_decay_period)),
    see `model.autoencoder.kl.beta_at`.
    """

    in_channels: int = 1  # 1 = grey images (MNIST-like); 3 for RGB
    base_channels: int = 32  # width of the first level; small enough to train on CPU
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # 3 levels: f = 4, 32x32 -> 8x8 latents
    num_res_blocks: int = 1  # ResNet blocks per level (encoder and decoder each); 1 keeps the nets small
    latent_channels: int = 4  # the sheet's `latent_size`: channels of the latent z (4 as in Rombach et al.)
    norm_groups: int = 8  # GroupNorm groups; must divide every level's width (8 divides 32 and 64)
    beta_start: float = 1.0  # KL weight at step 0: strong pull towards N(0, I) while the decoder is still poor
    kl_factor: float = 0.5  # beta is multiplied by this once per beta_decay_period steps (geometric decay)
    beta_decay_period: int = 1000  # steps per factor kl_factor: beta halves every 1000 steps by default
    beta_min: float = 1e-4  # floor of beta, reached after log(beta_min/beta_start)/log(kl_factor) periods

    def __post_init__(self) -> None:
        if isinstance(self.channel_mult, tuple):
            self.channel_mult = list(self.channel_mult)
        _check(self.in_channels > 0,
               f"vae.net.in_channels must be > 0, got {self.in_channels}; use 1 (grey) or 3 (RGB)")
        _check(self.base_channels > 0, f"vae.net.base_channels must be > 0, got {self.base_channels}; try 32")
        _check(
            len(self.channel_mult) > 0 and all(m > 0 for m in self.channel_mult),
            f"vae.net.channel_mult must be a non-empty list of positive ints, got {self.channel_mult}; try [1, 2, 2]",
        )
        _check(self.num_res_blocks >= 1, f"vae.net.num_res_blocks must be >= 1, got {self.num_res_blocks}; try 1")
        _check(self.latent_channels > 0, f"vae.net.latent_channels must be > 0, got {self.latent_channels}; try 4")
        _check(self.norm_groups > 0, f"vae.net.norm_groups must be > 0, got {self.norm_groups}; try 8")
        bad = [w for w in self.widths if w % self.norm_groups]
        _check(
            not bad,
            f"vae.net.norm_groups={self.norm_groups} does not divide the level widths {bad}; "
            f"pick norm_groups dividing base_channels * channel_mult[i] for every level",
        )
        _check(self.beta_start >= 0, f"vae.net.beta_start must be >= 0, got {self.beta_start}; try 1.0")
        _check(
            0 < self.kl_factor <= 1,
            f"vae.net.kl_factor must be in (0, 1], got {self.kl_factor}; try 0.5 (1 = constant beta)",
        )
        _check(
            self.beta_decay_period > 0,
            f"vae.net.beta_decay_period must be > 0 steps, got {self.beta_decay_period}; try 1000",
        )
        _check(
            0 <= self.beta_min <= self.beta_start,
            f"vae.net.beta_min must be in [0, vae.net.beta_start={self.beta_start}], got {self.beta_min}; try 1e-4",
        )

    @property
    def levels(self) -> int:
        """Number of resolution levels (the encoder downsamples levels - 1 times)."""
        return len(self.channel_mult)

    @property
    def widths(self) -> list[int]:
        """Channel width of each level: base_channels * channel_mult[i]."""
        return [self.base_channels * m for m in self.channel_mult]

    @property
    def downsample_factor(self) -> int:
        """f = 2 ** (levels - 1): an H x W image has an (H / f) x (W / f) latent."""
        return 2 ** (self.levels - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(latent_channels, height / f, width / f) for an image of the given size (must divide by f)."""
        f = self.downsample_factor
        _check(
            height % f == 0 and width % f == 0,
            f"image size {height}x{width} is not divisible by the VAE downsampling factor {f}; "
            f"change data.image_size or vae.net.channel_mult",
        )
        return self.latent_channels, height // f, width // f


SSIM_WINDOW = 11  # taps of the SSIM's Gaussian window (Wang et al. 2004; torchmetrics' default)
SSIM_MIN_SIZE = SSIM_WINDOW // 2 + 1  # its reflect padding needs more pixels a side than half the window


@dataclass
class LossConfig:
    """Weights of the reconstruction terms; the loss is sum_k weight_k * term_k, each term a per-sample mean.

    Terms: `l1` |x_hat - x|, `mse` (x_hat - x)^2, `ssim` 1 - SSIM (Wang et al. 2004), `ycbcr` 1 - SSIM on the
    luma Y plus L1 on the chroma Cb, Cr (ITU-R BT.601), `lpips` (Zhang et al. 2018, needs local backbone weights:
    see `model.autoencoder.perceptual.build_lpips`). A weight of 0 switches a term off.
    """

    l1: float = 1.0  # L1 alone is a sharp-ish, robust default that needs no extra weights
    mse: float = 0.0  # MSE blurs more than L1; off by default
    ssim: float = 0.0  # structure term; try 0.2 next to l1 for crisper edges
    ycbcr: float = 0.0  # luma-SSIM + chroma-L1: spends capacity where the eye looks (luma detail)
    lpips: float = 0.0  # perceptual term; off by default because it needs backbone weights on disk
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"  # alex is the smallest and the LPIPS authors' default
    lpips_weights: str | None = None  # local file with the weights (see build_lpips); None = torch hub cache

    def __post_init__(self) -> None:
        for name in self.term_names:
            value = getattr(self, name)
            _check(value >= 0, f"vae.loss.{name} must be >= 0, got {value}; use 0 to switch the term off")
        _check(
            any(getattr(self, name) > 0 for name in self.term_names),
            "vae.loss: every term weight is 0; set at least one of "
            + ", ".join(f"vae.loss.{n}" for n in self.term_names)
            + " > 0 (e.g. vae.loss.l1 1.0)",
        )
        _check(
            self.lpips_net in LPIPS_NETS,
            f"vae.loss.lpips_net must be one of {list(LPIPS_NETS)}, got {self.lpips_net!r}; try 'alex'",
        )
        _check(
            self.lpips_weights is None or bool(str(self.lpips_weights).strip()),
            "vae.loss.lpips_weights is an empty string; give a file path or null",
        )

    @property
    def term_names(self) -> tuple[str, ...]:
        """Names of the weighted terms, in the order they are computed and logged."""
        return ("l1", "mse", "ssim", "ycbcr", "lpips")

    def weights(self) -> dict[str, float]:
        """{term name: weight} for the switched-on terms (weight > 0)."""
        return {name: float(getattr(self, name)) for name in self.term_names if getattr(self, name) > 0}


@dataclass
class DiscConfig:
    """The optional patch discriminator of stage 1 (`model.autoencoder.discriminator`): hinge loss, adaptive weight.

    Both networks step together on each batch (one optimiser, two parameter groups), so gradient accumulation,
    clipping, the NaN guard and exact resume work as without it; `last.ckpt` holds the discriminator and its moments.
    """

    weight: float = 0.0  # 0 = no discriminator; 0.5 is the weight of latent diffusion's KL autoencoders
    start_step: int = 0  # disc_start: before this optimiser step neither network feels the adversarial loss
    base_channels: int = 64  # width of the first layer (doubling per layer, at most 8x)
    layers: int = 3  # stride-2 layers: 3 sees 70x70-px patches (pix2pix), 2 sees 34x34 (for 32 px images)
    lr: Optional[float] = None  # None = vae.optim.lr; it follows the same warm-up and decay
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # the GAN betas of taming and latent diffusion

    def __post_init__(self) -> None:
        _check(self.weight >= 0, f"vae.disc.weight must be >= 0 (0 = off), got {self.weight}; try 0.5")
        _check(self.start_step >= 0, f"vae.disc.start_step must be >= 0, got {self.start_step}")
        _check(self.base_channels > 0, f"vae.disc.base_channels must be > 0, got {self.base_channels}; try 64")
        _check(self.layers >= 1, f"vae.disc.layers must be >= 1, got {self.layers}; try 3 (2 for 32 px images)")
        _check(self.lr is None or self.lr > 0, f"vae.disc.lr must be > 0 or null, got {self.lr}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               f"vae.disc.betas must be two numbers in [0, 1), got {self.betas}")

    @property
    def enabled(self) -> bool:
        return self.weight > 0
