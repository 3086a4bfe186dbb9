"""Typed configs of the denoiser networks (ConvNeXt UNet and the 2-D toy MLP).

Plain dataclasses with simple field types so jsonargparse can map JSON onto them; `__post_init__`
rejects out-of-range values with a one-line `UserError` naming the dotted key and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from model.errors import UserError


def _check(ok: bool, message: str) -> None:
    """Raise `UserError(message)` unless `ok`; `message` is one line: key, what is wrong, how to fix."""
    if not ok:
        raise UserError(message)


RESAMPLERS = ("conv", "patch")


@dataclass
class UNetConfig:
    """ConvNeXt UNet denoiser. Width of level i is `base_channels * channel_mult[i]`; levels = len(channel_mult)."""

    in_channels: int = 4  # 4 = latent channels of the default VAE; use 1 or 3 for pixel space
    base_channels: int = 64  # width of the first level; 64 is the small-UNet width of Ho et al. halved twice over
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # 3 levels: 8x8 latents -> 2x2 at the bottom
    blocks_per_level: list[int] | int = 2  # ConvNeXt blocks per level (one value for all levels, or one per level)
    attention_levels: list[int] = field(default_factory=list)  # self-attention only where tokens are few (coarsest)
    num_heads: int = 4  # attention heads; every attended width (and the middle) must be divisible by it
    num_classes: int = 0  # 0 = unconditional; K > 0 adds K + 1 class embeddings (index K = null class for CFG)
    # side of a learned bias map per class (null class included) added after the stem, so the class also acts by
    # position, not only through the blocks' channel-wise FiLM; 0 = off, else the denoiser input's size
    class_bias_size: int = 0
    # levels whose blocks cross-attend to the prompt (and then the middle too); the coarse ones, where tokens are few
    cross_attention_levels: list[int] = field(default_factory=list)
    context_dim: int = 0  # width of the encoded prompt; 0 = no prompt (set from denoiser.text when it is on)
    time_embed_dim: int | None = None  # None = 4 * base_channels, the width ratio of Ho et al.'s time MLP
    # how levels change size: "conv" = stride-2 3x3 conv down, nearest x2 + 3x3 conv up (Ho et al. 2020); "patch" =
    # 2x2 stride-2 conv down and 2x2 stride-2 transposed conv up (patch merging and splitting, as Crowson et al. 2024's
    # hourglass transformer), a ninth and a quarter of the arithmetic
    resample: str = "conv"
    mid_attention: bool = True  # self-attention between the two middle blocks; at 2x2 it sees only 4 positions
    kernel_size: int = 7  # depthwise kernel (Liu et al. 2022 use 7); 3 suits latents of 8x8 and smaller
    mlp_ratio: int = 4  # ConvNeXt inverted-bottleneck expansion (Liu et al. 2022 use 4)
    layer_scale_init: float = 1e-6  # initial layer-scale gamma (Liu et al. 2022): blocks start near identity
    dropout: float = 0.0  # dropout inside each block's MLP; 0 = off, small data sets may want 0.1
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% more time

    def __post_init__(self) -> None:
        if isinstance(self.channel_mult, tuple):
            self.channel_mult = list(self.channel_mult)
        if isinstance(self.attention_levels, tuple):
            self.attention_levels = list(self.attention_levels)
        if isinstance(self.cross_attention_levels, tuple):
            self.cross_attention_levels = list(self.cross_attention_levels)
        if isinstance(self.blocks_per_level, tuple):
            self.blocks_per_level = list(self.blocks_per_level)
        _check(self.in_channels > 0, f"denoiser.unet.in_channels must be > 0, got {self.in_channels}; set it to the channels of x")
        _check(self.base_channels > 0, f"denoiser.unet.base_channels must be > 0, got {self.base_channels}; try 64")
        _check(
            len(self.channel_mult) > 0 and all(m > 0 for m in self.channel_mult),
            f"denoiser.unet.channel_mult must be a non-empty list of positive ints, got {self.channel_mult}; try [1, 2, 2]",
        )
        levels = len(self.channel_mult)
        if isinstance(self.blocks_per_level, list):
            _check(
                len(self.blocks_per_level) == levels,
                f"denoiser.unet.blocks_per_level has {len(self.blocks_per_level)} entries but denoiser.unet.channel_mult has {levels} "
                f"levels; give one count per level or a single int",
            )
        _check(
            all(b >= 1 for b in self.blocks),
            f"denoiser.unet.blocks_per_level must be >= 1 for every level, got {self.blocks_per_level}; try 2",
        )
        bad_levels = [i for i in self.attention_levels if not 0 <= i < levels]
        _check(
            not bad_levels,
            f"denoiser.unet.attention_levels {bad_levels} out of range for {levels} levels; use indices in [0, {levels - 1}]",
        )
        _check(
            len(set(self.attention_levels)) == len(self.attention_levels),
            f"denoiser.unet.attention_levels has duplicates: {self.attention_levels}; list each level once",
        )
        _check(self.num_heads > 0, f"denoiser.unet.num_heads must be > 0, got {self.num_heads}; try 4")
        bad_cross = [i for i in self.cross_attention_levels if not 0 <= i < levels]
        _check(not bad_cross and len(set(self.cross_attention_levels)) == len(self.cross_attention_levels),
               f"denoiser.unet.cross_attention_levels must be distinct levels in [0, {levels - 1}], got "
               f"{self.cross_attention_levels}")
        _check(self.context_dim >= 0, f"denoiser.unet.context_dim must be >= 0, got {self.context_dim}")
        middle = {levels - 1} if self.mid_attention or self.cross_attention_levels else set()  # the middle's width
        attended = sorted(set(self.attention_levels) | set(self.cross_attention_levels) | middle)
        bad_widths = [self.widths[i] for i in attended if self.widths[i] % self.num_heads]
        _check(
            not bad_widths,
            f"denoiser.unet.num_heads={self.num_heads} does not divide the attended widths {bad_widths}; "
            f"pick num_heads dividing base_channels * channel_mult at attended levels and the last level",
        )
        _check(self.num_classes >= 0, f"denoiser.unet.num_classes must be >= 0, got {self.num_classes}; 0 = unconditional")
        _check(self.class_bias_size >= 0,
               f"denoiser.unet.class_bias_size must be >= 0, got {self.class_bias_size}; 0 = off")
        _check(not self.class_bias_size or self.num_classes > 0,
               f"denoiser.unet.class_bias_size is {self.class_bias_size} but the network is unconditional "
               f"(num_classes 0); set class_bias_size 0 or give the network classes")
        _check(
            self.time_embed_dim is None or self.time_embed_dim > 0,
            f"denoiser.unet.time_embed_dim must be > 0 or null, got {self.time_embed_dim}; null = 4 * base_channels",
        )
        _check(self.resample in RESAMPLERS,
               f"denoiser.unet.resample must be one of {', '.join(RESAMPLERS)}, got {self.resample!r}; try conv")
        _check(self.kernel_size >= 1 and self.kernel_size % 2 == 1,
               f"denoiser.unet.kernel_size must be an odd number >= 1, got {self.kernel_size}; try 7 or 3")
        _check(self.mlp_ratio >= 1, f"denoiser.unet.mlp_ratio must be >= 1, got {self.mlp_ratio}; try 4")
        _check(
            self.layer_scale_init > 0,
            f"denoiser.unet.layer_scale_init must be > 0, got {self.layer_scale_init}; try 1e-6",
        )
        _check(0.0 <= self.dropout < 1.0, f"denoiser.unet.dropout must be in [0, 1), got {self.dropout}; try 0.0")

    @property
    def levels(self) -> int:
        """Number of resolution levels (the UNet downsamples levels - 1 times)."""
        return len(self.channel_mult)

    @property
    def widths(self) -> list[int]:
        """Channel width of each level: base_channels * channel_mult[i]."""
        return [self.base_channels * m for m in self.channel_mult]

    @property
    def blocks(self) -> list[int]:
        """Blocks per level as a list, whichever form blocks_per_level was given in."""
        if isinstance(self.blocks_per_level, int):
            return [self.blocks_per_level] * self.levels
        return list(self.blocks_per_level)

    @property
    def embed_dim(self) -> int:
        """Width of the conditioning (time + class) embedding."""
        return self.time_embed_dim if self.time_embed_dim is not None else 4 * self.base_channels

    @property
    def size_multiple(self) -> int:
        """Height and width of the input must be divisible by this: 2 ** (levels - 1)."""
        return 2 ** (self.levels - 1)


@dataclass
class ToyMLPConfig:
    """Residual MLP denoiser for 2-D toy point clouds."""

    dim: int = 2  # coordinates per point (2-D toy data)
    hidden: int = 128  # hidden width; 128 fits the 2-D toys in a few minutes on CPU
    depth: int = 4  # residual blocks; 4 is enough for rings and moons
    num_classes: int = 0  # 0 = unconditional; K > 0 adds K + 1 class embeddings (index K = null class for CFG)

    def __post_init__(self) -> None:
        _check(self.dim > 0, f"denoiser.toy.dim must be > 0, got {self.dim}; set it to the point dimension (2)")
        _check(self.hidden > 0, f"denoiser.toy.hidden must be > 0, got {self.hidden}; try 128")
        _check(self.depth >= 1, f"denoiser.toy.depth must be >= 1, got {self.depth}; try 4")
        _check(self.num_classes >= 0, f"denoiser.toy.num_classes must be >= 0, got {self.num_classes}; 0 = unconditional")
