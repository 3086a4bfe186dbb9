"""ConvNeXt UNet denoiser: ConvNeXt blocks (Liu et al. 2022) with FiLM conditioning in a UNet (Ronneberger et al.
2015) laid out as in Ho et al. 2020 / Dhariwal & Nichol 2021, and cross-attention to an encoded prompt (Rombach et
al. 2022, Sec. 3.3) at the configured levels. The network never sees a noise schedule: it maps (x_t, t, c) to a
tensor shaped like x_t, in whatever parametrisation the training system chose (eps, x0 or v).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.conditioning import Condition, labels_of
from model.denoiser.config import UNetConfig
from model.denoiser.embeddings import ClassEmbedding, TimeEmbedding


def group_count(channels: int, max_groups: int = 32) -> int:
    """Largest number of GroupNorm groups <= max_groups that divides `channels` (32 as in Wu & He 2018)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


SMALL_MAP = 2  # maps of at most SMALL_MAP x SMALL_MAP take `padded_depthwise`


def is_small_map(height: int, width: int) -> bool:
    """Whether `depthwise` pads a map of this size beforehand."""
    return max(height, width) <= SMALL_MAP


def depthwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """conv(x) for a depthwise convolution with "same" padding, through `padded_depthwise` on a small map (at most
    SMALL_MAP on a side): oneDNN's depthwise kernels take 1.2 to 8 times longer there with implicit padding (forward
    and backward), and mostly longer with explicit padding on larger maps (`python -m benchmarks.small_maps`,
    docs/benchmarks.md)."""
    return padded_depthwise(conv, x) if is_small_map(*x.shape[-2:]) else conv(x)


def padded_depthwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """The same sums as conv(x), from x padded with zeros beforehand and the kernel's taps that can reach the map."""
    height, width = x.shape[-2:]
    c = conv.kernel_size[0] // 2
    rh, rw = min(c, height - 1), min(c, width - 1)  # reach of a tap that can touch the map
    weight = conv.weight[:, :, c - rh:c + rh + 1, c - rw:c + rw + 1]
    return F.conv2d(F.pad(x, (rw, rw, rh, rh)), weight, conv.bias, groups=conv.groups)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022, fig. 4) with FiLM conditioning (Perez et al. 2018).

        h = dwconv(x)                             depthwise spatial mixing (k x k, 7 in the paper)
        h = LN(h) * (1 + scale(e)) + shift(e)     channels-last LayerNorm, then FiLM from the embedding e
        h = Linear(GELU(Linear_up(h)))            inverted bottleneck, width in -> mlp_ratio * out -> out
        out = skip(x) + gamma * h                 layer scale gamma; skip = 1x1 conv when channels change
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int,
        mlp_ratio: int = 4,
        layer_scale_init: float = 1e-6,
        dropout: float = 0.0,
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels)
        self.norm = nn.LayerNorm(in_channels)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * in_channels))
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, mlp_ratio * out_channels),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_ratio * out_channels, out_channels),
        )
        self.gamma = nn.Parameter(torch.full((out_channels,), float(layer_scale_init)))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W)."""
        h = depthwise(self.dwconv, x)  # (B, C_in, H, W)
        h = rearrange(h, "b c h w -> b h w c")  # channels-last for LayerNorm and Linear
        scale, shift = rearrange(self.film(emb), "b (two c) -> two b 1 1 c", two=2)  # each (B, 1, 1, C_in)
        h = self.norm(h) * (1 + scale) + shift  # (B, H, W, C_in)
        h = self.mlp(h) * self.gamma  # (B, H, W, C_out)
        h = rearrange(h, "b h w c -> b c h w")  # (B, C_out, H, W)
        return self.skip(x) + h


def convnext_block(in_channels: int, out_channels: int, cfg: UNetConfig) -> ConvNeXtBlock:
    """A ConvNeXtBlock with the embedding width, expansion, layer scale, dropout and kernel of `cfg`."""
    return ConvNeXtBlock(in_channels, out_channels, cfg.embed_dim, cfg.mlp_ratio, cfg.layer_scale_init, cfg.dropout,
                         cfg.kernel_size)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions (Vaswani et al. 2017), pre-norm with a residual."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"SelfAttention2d: channels={channels} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        _, _, height, width = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        q, k, v = rearrange(qkv, "b (three n d) h w -> three b n (h w) d", three=3, n=self.num_heads)  # (B, n, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, n, HW, d), softmax(q k^T / sqrt(d)) v
        h = rearrange(h, "b n (h w) d -> b (n d) h w", h=height, w=width)  # (B, C, H, W)
        return x + self.proj(h)


class CrossAttention2d(nn.Module):
    """Multi-head attention from the H*W positions (queries) to the prompt's tokens (keys, values), pre-norm with a
    residual (Rombach et al. 2022, Sec. 3.3). Padding tokens are masked out; the output projection starts at zero,
    so the block starts as the identity and a prompt changes nothing until training makes it."""

    def __init__(self, channels: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"CrossAttention2d: channels={channels} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.context_norm = nn.LayerNorm(context_dim)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), context (B, L, D), mask (B, L) True at real tokens -> (B, C, H, W)."""
        _, _, height, width = x.shape
        q = rearrange(self.q(self.norm(x)), "b (n d) h w -> b n (h w) d", n=self.num_heads)  # (B, n, HW, d)
        k, v = rearrange(self.kv(self.context_norm(context)), "b l (two n d) -> two b n l d", two=2,
                         n=self.num_heads)  # each (B, n, L, d)
        keep = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L), broadcast over heads and queries
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, n, HW, d)
        return x + self.proj(rearrange(h, "b n (h w) d -> b (n d) h w", h=height, w=width))


class Downsample(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H/2, W/2): a stride-2 3x3 conv ("conv"), or a 2x2 stride-2 conv that maps each
    2x2 patch to one position ("patch")."""

    def __init__(self, in_channels: int, out_channels: int, resample: str = "conv") -> None:
        super().__init__()
        if resample == "patch":
            self.conv = nn.Conv2d(in_channels, out_channels, 2, stride=2)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, 2H, 2W): nearest x2 then a 3x3 conv ("conv"), or a 2x2 stride-2 transposed conv
    that maps each position to one 2x2 patch ("patch")."""

    def __init__(self, in_channels: int, out_channels: int, resample: str = "conv") -> None:
        super().__init__()
        patch = resample == "patch"
        # the transposed conv doubles the size itself; nn.Upsample has no state, so checkpoints keep their keys
        self.grow = nn.Identity() if patch else nn.Upsample(scale_factor=2.0, mode="nearest")
        self.conv = (nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2) if patch
                     else nn.Conv2d(in_channels, out_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.grow(x))


class Level(nn.Module):
    """One resolution level: ConvNeXt blocks, each optionally followed by self-attention and by cross-attention to
    the prompt."""

    def __init__(self, in_channels: list[int], out_channels: int, cfg: UNetConfig, attention: bool,
                 cross_attention: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(convnext_block(c, out_channels, cfg) for c in in_channels)
        self.attentions = nn.ModuleList(
            SelfAttention2d(out_channels, cfg.num_heads) if attention else nn.Identity() for _ in in_channels
        )
        if cross_attention:  # absent otherwise, so checkpoints without text keep their keys
            self.cross_attentions = nn.ModuleList(
                CrossAttention2d(out_channels, cfg.context_dim, cfg.num_heads) for _ in in_channels)

    def cross(self, j: int) -> nn.Module | None:
        return self.cross_attentions[j] if hasattr(self, "cross_attentions") else None


class ConvNeXtUNet(nn.Module):
    """UNet of ConvNeXt blocks; `forward(x, t, c=None)` returns a tensor shaped like x.

    Layout (L = len(channel_mult), w_i = base_channels * channel_mult[i]):
        stem 3x3 conv -> w_0 (+ class_bias[c], a learned w_0 x n x n map per class, when class_bias_size = n > 0)
        encoder level i: blocks_per_level[i] blocks at w_i (+ attention if i in attention_levels), each output kept
                         as a skip; then a downsample w_i -> w_{i+1} (not after the last level; `resample`)
        middle:          block, attention (unless mid_attention is off), block at w_{L-1}
        decoder level i (L-1 .. 0): per block, concatenate the matching skip (2 w_i -> w_i) (+ attention); then
                         an upsample w_i -> w_{i-1} (not after level 0; `resample`)
        output:          GroupNorm, SiLU, 3x3 conv w_0 -> in_channels, zero-initialised so the initial output is 0
    Conditioning e = TimeEmbedding(t) (+ ClassEmbedding(c) when num_classes > 0, + a projection of the prompt's
    mean token when context_dim > 0, as Imagen adds its pooled text embedding, Saharia et al. 2022) is FiLM-injected
    in every block. With a prompt, cross-attention follows every block of the levels in cross_attention_levels and
    the middle's attention.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths, blocks = cfg.widths, cfg.blocks
        self.time_embed = TimeEmbedding(cfg.base_channels, cfg.embed_dim)
        self.class_embed = ClassEmbedding(cfg.num_classes, cfg.embed_dim) if cfg.num_classes > 0 else None
        self.context_embed = nn.Linear(cfg.context_dim, cfg.embed_dim) if cfg.context_dim else None
        crossed = set(cfg.cross_attention_levels)

        self.stem = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        if cfg.class_bias_size and self.class_embed is not None:  # zero at the start: the plain UNet's output
            side = cfg.class_bias_size
            self.class_bias = nn.Parameter(torch.zeros(cfg.num_classes + 1, widths[0], side, side))
        self.encoder = nn.ModuleList(
            Level([w] * n, w, cfg, i in cfg.attention_levels, i in crossed) for i, (w, n) in enumerate(zip(widths, blocks))
        )
        self.downsamples = nn.ModuleList(Downsample(widths[i], widths[i + 1], cfg.resample)
                                         for i in range(cfg.levels - 1))

        w_mid = widths[-1]
        self.mid_block1 = convnext_block(w_mid, w_mid, cfg)
        self.mid_attention = SelfAttention2d(w_mid, cfg.num_heads) if cfg.mid_attention else nn.Identity()
        if crossed:
            self.mid_cross_attention = CrossAttention2d(w_mid, cfg.context_dim, cfg.num_heads)
        self.mid_block2 = convnext_block(w_mid, w_mid, cfg)

        # decoder[i] is level i (indexed like the encoder); it runs from level L-1 down to 0
        self.decoder = nn.ModuleList(
            Level([2 * w] * n, w, cfg, i in cfg.attention_levels, i in crossed)
            for i, (w, n) in enumerate(zip(widths, blocks))
        )
        self.upsamples = nn.ModuleList(Upsample(widths[i + 1], widths[i], cfg.resample) for i in range(cfg.levels - 1))

        self.out_norm = nn.GroupNorm(group_count(widths[0]), widths[0])
        self.out_conv = nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @property
    def null_class(self) -> int | None:
        """Index of the learned null class (= num_classes), or None for an unconditional network."""
        return self.class_embed.null_class if self.class_embed is not None else None

    def class_rows(self, c: Tensor | None, batch_size: int, device: torch.device) -> Tensor | None:
        """The checked class indices (B,) of labels c (None = null class), read by the class embedding and the class
        bias maps; None for an unconditional network."""
        if self.class_embed is None:
            return None
        if c is not None and c.shape != (batch_size,):
            raise ValueError(f"c must have shape ({batch_size},) to match x, got {tuple(c.shape)}")
        return self.class_embed.indices(c, batch_size, device)

    def embed(self, t: Tensor, rows: Tensor | None, batch_size: int) -> Tensor:
        """Time and class embedding e = time_embed(t) + class_embed(rows) (class term only when num_classes > 0)."""
        if t.ndim == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(f"t must have shape ({batch_size},) to match x, got {tuple(t.shape)}")
        emb = self.time_embed(t)  # (B, E)
        if rows is not None:
            emb = emb + self.class_embed.embedding(rows)  # (B, E)
        return emb

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless x is (B, in_channels, H, W) with H, W divisible by 2 ** (levels - 1)."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"x must have shape (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if hasattr(self, "class_bias") and x.shape[2:] != self.class_bias.shape[2:]:
            raise ValueError(f"x spatial size {tuple(x.shape[2:])} must be {tuple(self.class_bias.shape[2:])}, the size "
                             f"of the class bias maps (class_bias_size)")
        m = self.cfg.size_multiple
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(
                f"x spatial size {tuple(x.shape[2:])} must be divisible by 2**(levels-1) = {m} "
                f"for a UNet with {self.cfg.levels} levels; resize the input or use fewer levels"
            )

    def prompt(self, c: Tensor | Condition | None, batch_size: int) -> tuple[Tensor | None, Tensor | None]:
        """(context (B, L, D), mask (B, L)) of the condition; None, None for a network without prompts."""
        if not self.cfg.context_dim:
            return None, None
        if not isinstance(c, Condition) or c.context is None:
            raise ValueError("this network reads an encoded prompt: pass a Condition with its context")
        if c.context.shape[0] != batch_size or c.context.shape[-1] != self.cfg.context_dim:
            raise ValueError(f"the prompt context must have shape ({batch_size}, L, {self.cfg.context_dim}), got "
                             f"{tuple(c.context.shape)}")
        return c.context, c.mask

    def pooled(self, context: Tensor, mask: Tensor | None) -> Tensor:
        """The prompt's mean over its real tokens, projected to the embedding width (B, E)."""
        weights = torch.ones(context.shape[:2], device=context.device) if mask is None else mask.to(context.dtype)
        mean = (context * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
        return self.context_embed(mean)

    def run(self, block: nn.Module, attention: nn.Module, cross: nn.Module | None, h: Tensor, emb: Tensor,
            context: Tensor | None, mask: Tensor | None) -> Tensor:
        """cross(attention(block(h, emb)), context); with gradient checkpointing while training, the activations are
        recomputed in the backward pass instead of kept (Chen et al. 2016): less memory for about one more forward."""
        def step(a: Tensor, b: Tensor) -> Tensor:
            a = attention(block(a, b))
            return a if cross is None else cross(a, context, mask)

        if self.cfg.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(step, h, emb, use_reentrant=False)
        return step(h, emb)

    def forward(self, x: Tensor, t: Tensor, c: Tensor | Condition | None = None) -> Tensor:
        """x (B, C, H, W), t (B,) float time, c: labels (B,) int64, a `Condition` (labels and an encoded prompt), or
        None (= null class) -> (B, C, H, W)."""
        self.check_input(x)
        context, mask = self.prompt(c, x.shape[0])
        rows = self.class_rows(labels_of(c), x.shape[0], x.device)
        emb = self.embed(t, rows, x.shape[0])  # (B, E)
        if context is not None:
            emb = emb + self.pooled(context, mask)

        h = self.stem(x)  # (B, w_0, H, W)
        if hasattr(self, "class_bias"):  # an embedding lookup: its backward sums in a fixed order, unlike indexing's
            h = h + F.embedding(rows, self.class_bias.flatten(1)).view(-1, *self.class_bias.shape[1:])
        skips: list[Tensor] = []
        for i, level in enumerate(self.encoder):
            for j, (block, attention) in enumerate(zip(level.blocks, level.attentions)):
                h = self.run(block, attention, level.cross(j), h, emb, context, mask)  # (B, w_i, H_i, W_i)
                skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)  # (B, w_{i+1}, H_i / 2, W_i / 2)

        h = self.mid_attention(self.mid_block1(h, emb))
        if context is not None and hasattr(self, "mid_cross_attention"):
            h = self.mid_cross_attention(h, context, mask)
        h = self.mid_block2(h, emb)  # (B, w_{L-1}, H_{L-1}, W_{L-1})

        for i in reversed(range(len(self.decoder))):
            level = self.decoder[i]
            for j, (block, attention) in enumerate(zip(level.blocks, level.attentions)):
                h = torch.cat([h, skips.pop()], dim=1)  # (B, 2 w_i, H_i, W_i)
                h = self.run(block, attention, level.cross(j), h, emb, context, mask)  # (B, w_i, H_i, W_i)
            if i > 0:
                h = self.upsamples[i - 1](h)  # (B, w_{i-1}, 2 H_i, 2 W_i)

        return self.out_conv(F.silu(self.out_norm(h)))  # (B, C, H, W)
