"""A text encoder that needs no downloaded files: UTF-8 bytes as tokens, a few transformer layers, trained with the
denoiser.

Tokens: 0 = padding, 1 = BOS, 2 = EOS, byte b = b + 3 (a vocabulary of 259). Every prompt, the empty one included,
is [BOS, bytes..., EOS] padded to `max_length`, so the empty prompt (the unconditional branch of classifier-free
guidance) is a sequence of two real tokens, not an empty one.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from model.text.config import TextConfig

PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
VOCAB = 256 + OFFSET


class ByteTokenizer:
    """Prompts → (tokens (B, L) int64, mask (B, L) bool, True at real tokens), L = max_length."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        tokens = torch.full((len(prompts), self.max_length), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = [BOS] + [b + OFFSET for b in prompt.encode("utf-8")[: self.max_length - 2]] + [EOS]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens, tokens != PAD

    def condition(self, prompts: Sequence[str], device=None) -> dict[str, Tensor]:
        """The prompt part of a `Condition`: tokens, which the network's own encoder reads."""
        tokens, mask = self(prompts)
        return {"tokens": tokens.to(device), "mask": mask.to(device)}


class ByteTextEncoder(nn.Module):
    """tokens (B, L) → context (B, L, width): byte embeddings plus learned positions, pre-norm transformer layers
    (Vaswani et al. 2017) that attend to real tokens only, and a final LayerNorm."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, cfg.width)
        self.position = nn.Parameter(0.02 * torch.randn(cfg.max_length, cfg.width))
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]  # (B, L, width)
        return self.norm(self.layers(h, src_key_padding_mask=tokens == PAD))
