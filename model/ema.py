"""Exponential moving average of the denoiser's weights (the weights sampling uses)."""
from __future__ import annotations

import torch
from torch import nn

from model.compat import lerp_all_


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the decay, min(decay, (1 + n) / (10 + n)), so short runs are not dominated by the init."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·net for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    net_params = [p.detach() for p in net.parameters()]
    lerp_all_(ema_params, net_params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)
