"""A denoiser network with a prompt encoder of its own, trained with it (the byte encoder of `model.text`).

The encoder is a part of the network, so the optimiser, the EMA copy, the checkpoint and the export carry it with
no extra code. A frozen pretrained encoder is not wrapped this way: its prompts arrive already encoded.
"""
from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from model.conditioning import Condition


class PromptedNetwork(nn.Module):
    """forward(x, t, c): a `Condition`'s tokens become its context through `encoder`, then `net` runs."""

    def __init__(self, net: nn.Module, encoder: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.encoder = encoder

    @property
    def null_class(self):
        return self.net.null_class

    def encode_prompt(self, c):
        """c with its tokens replaced by their context; anything else unchanged. A sampler binds the encoded
        prompt once, so the encoder does not run again at every step."""
        if isinstance(c, Condition) and c.tokens is not None:
            return replace(c, tokens=None, context=self.encoder(c.tokens))
        return c

    def forward(self, x: Tensor, t: Tensor, c=None) -> Tensor:
        return self.net(x, t, self.encode_prompt(c))
