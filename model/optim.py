"""AdamW with a linear warm-up and an optional cosine decay, stepped once per optimiser step (plain torch)."""
from __future__ import annotations

import math
from typing import Any

import torch

from model.config import OptimConfig


def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """The rate of optimiser step `step` (0-based) as a fraction of optim.lr: a linear ramp over warmup_steps, then
    constant (decay "none") or a half cosine from 1 down to final_lr_fraction at the last step (Loshchilov & Hutter
    2017, without restarts)."""
    warmup = max(optim.warmup_steps, 1)
    if step < warmup or optim.decay == "none":
        return min(1.0, (step + 1) / warmup)
    progress = min(1.0, (step - warmup) / max(max_steps - warmup, 1))  # 0 after warm-up, (max-1-w)/(max-w) at the end
    return optim.final_lr_fraction + (1.0 - optim.final_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fused_fits(params: list) -> bool:
    """torch's fused AdamW (one kernel for all tensors) runs on CPU and CUDA floats; elsewhere the per-tensor loop."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(tensors) and all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors)


def adamw_with_warmup(params, optim: OptimConfig, max_steps: int) -> dict[str, Any]:
    """AdamW and a per-step LambdaLR following `lr_factor`; fused when optim.fused asks and the device has it."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay,
                            fused=optim.fused and fused_fits(params))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, optim, max_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
