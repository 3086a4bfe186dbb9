"""Residual MLP denoiser for 2-D toy point clouds, with the UNet's `forward(x, t, c=None)` signature."""
from __future__ import annotations

from torch import Tensor, nn

from model.denoiser.config import ToyMLPConfig
from model.denoiser.embeddings import ClassEmbedding, TimeEmbedding


class ResidualMLPBlock(nn.Module):
    """h + Linear(SiLU(Linear(LN(h)) + Linear(e))): a pre-norm residual MLP block with the embedding e added."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc_in = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.fc_out = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """h (B, hidden), emb (B, hidden) -> (B, hidden)."""
        return h + self.fc_out(self.act(self.fc_in(self.norm(h)) + self.emb_proj(emb)))


class ToyMLP(nn.Module):
    """x (B, dim) -> Linear -> depth x ResidualMLPBlock(e) -> LN -> Linear -> (B, dim).

    e = TimeEmbedding(t) (+ ClassEmbedding(c) when num_classes > 0; c=None means the null class).
    """

    def __init__(self, cfg: ToyMLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimeEmbedding(cfg.hidden, cfg.hidden)
        self.class_embed = ClassEmbedding(cfg.num_classes, cfg.hidden) if cfg.num_classes > 0 else None
        self.fc_in = nn.Linear(cfg.dim, cfg.hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(cfg.hidden) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(cfg.hidden)
        self.fc_out = nn.Linear(cfg.hidden, cfg.dim)

    @property
    def null_class(self) -> int | None:
        """Index of the learned null class (= num_classes), or None for an unconditional network."""
        return self.class_embed.null_class if self.class_embed is not None else None

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """x (B, dim), t (B,) int64, c (B,) int64 or None (= null class) -> (B, dim)."""
        if x.ndim != 2 or x.shape[1] != self.cfg.dim:
            raise ValueError(f"x must have shape (B, {self.cfg.dim}), got {tuple(x.shape)}")
        batch_size = x.shape[0]
        if t.ndim == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(f"t must have shape ({batch_size},) to match x, got {tuple(t.shape)}")
        emb = self.time_embed(t)  # (B, hidden)
        if self.class_embed is not None:
            if c is not None and c.shape != (batch_size,):
                raise ValueError(f"c must have shape ({batch_size},) to match x, got {tuple(c.shape)}")
            emb = emb + self.class_embed(c, batch_size, x.device)  # (B, hidden)
        h = self.fc_in(x)  # (B, hidden)
        for block in self.blocks:
            h = block(h, emb)  # (B, hidden)
        return self.fc_out(self.out_norm(h))  # (B, dim)
