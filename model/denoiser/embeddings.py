"""Conditioning embeddings: sinusoidal time embedding and class embedding with a learned null class."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (discrete) time, Vaswani et al. 2017 sec. 3.5 as used by Ho et al. 2020.

    With half = dim // 2 and frequencies w_i = max_period ** (-i / half), i = 0..half-1:
        emb(t) = [sin(t w_0), ..., sin(t w_{half-1}), cos(t w_0), ..., cos(t w_{half-1})]
    (sines then cosines, concatenated as in Ho et al.'s code rather than interleaved). An odd `dim` gets one zero
    column at the end. `t` is embedded as float(t), shape (B,) -> (B, dim), float32.
    """
    if t.ndim != 1:
        raise ValueError(f"sinusoidal_embedding expects t of shape (B,), got {tuple(t.shape)}")
    if dim < 1:
        raise ValueError(f"sinusoidal_embedding needs dim >= 1, got {dim}")
    half = dim // 2
    i = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * i / max(half, 1))  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))  # (B, dim)
    return emb


class TimeEmbedding(nn.Module):
    """t -> sinusoidal(t) -> Linear -> SiLU -> Linear (the time MLP of Ho et al. 2020)."""

    def __init__(self, freq_dim: int, embed_dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: Tensor) -> Tensor:
        """(B,) int64 or float times -> (B, embed_dim)."""
        return self.mlp(sinusoidal_embedding(t, self.freq_dim, self.max_period))


class ClassEmbedding(nn.Module):
    """Class embedding with num_classes + 1 rows; row `num_classes` is the learned null class (Ho & Salimans 2022).

    Classifier-free guidance evaluates the network at the null class; `c=None` means "all null".
    """

    def __init__(self, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ClassEmbedding needs num_classes >= 1, got {num_classes}; use no class embedding for 0")
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)

    @property
    def null_class(self) -> int:
        """Index of the learned null (unconditional) class: num_classes."""
        return self.num_classes

    def indices(self, c: Tensor | None, batch_size: int | None = None, device: torch.device | None = None) -> Tensor:
        """The rows that (B,) integer labels in [0, num_classes] (num_classes = null), or None, select: (B,) int64.

        With c=None, `batch_size` (and optionally `device`) give the shape of the all-null batch.
        """
        if c is None:
            if batch_size is None:
                raise ValueError("ClassEmbedding(c=None) needs batch_size to build an all-null batch")
            device = device if device is not None else self.embedding.weight.device
            c = torch.full((batch_size,), self.null_class, dtype=torch.long, device=device)
        if c.ndim != 1 or c.dtype.is_floating_point or c.dtype == torch.bool:
            raise ValueError(f"class labels must be an integer tensor of shape (B,), got {c.dtype} {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) > self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class), "
                f"got min {int(c.min())} max {int(c.max())}; map unlabelled (-1) data to the null class"
            )
        return c.long()

    def forward(self, c: Tensor | None, batch_size: int | None = None, device: torch.device | None = None) -> Tensor:
        """(B,) labels as in `indices` -> (B, embed_dim)."""
        return self.embedding(self.indices(c, batch_size, device))
