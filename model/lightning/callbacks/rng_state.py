"""The random streams of training (timesteps, noise, label dropout, the VAE's z) per rank, saved and restored.

A resumed run then draws what the uninterrupted run would have drawn, so together with the resumable data order
(data/resumable.py) it ends with the same weights. A fresh run seeds rank r with `seed + r`: Lightning's
`seed_everything` gives every rank the same seed (right for initialising the weights identically), but under DDP
each rank must draw its own timesteps and noise for its own images.
"""
from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from model.lightning.callbacks.same_weights import gather


def cuda_in_use(pl_module: pl.LightningModule) -> bool:
    return pl_module.device.type == "cuda"


class RNGState(pl.Callback):
    """Each rank's torch CPU (and CUDA) generator state in the checkpoint; restored when training starts."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.restored: Optional[dict[str, list[torch.Tensor]]] = None
        self.trainer: Optional[pl.Trainer] = None
        self.module: Optional[pl.LightningModule] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer, self.module = trainer, pl_module

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank, size = trainer.global_rank, trainer.world_size
        if self.restored is not None and len(self.restored["cpu"]) == size:
            torch.set_rng_state(self.restored["cpu"][rank])
            if self.restored.get("cuda") and cuda_in_use(pl_module):
                torch.cuda.set_rng_state(self.restored["cuda"][rank], pl_module.device)
            return
        if self.restored is not None:
            rank_zero_warn(f"the checkpoint was written by {len(self.restored['cpu'])} processes and this run has "
                           f"{size}: the data order and noise after the resume differ from an uninterrupted run")
        torch.manual_seed(self.seed + rank + trainer.global_step)  # + step: a resume does not replay step 0's draws

    def state_dict(self) -> dict[str, Any]:
        assert self.trainer is not None and self.module is not None
        device = self.module.device
        state = {"cpu": gather(self.trainer, torch.get_rng_state(), device)}
        if cuda_in_use(self.module):
            state["cuda"] = gather(self.trainer, torch.cuda.get_rng_state(device), device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state
