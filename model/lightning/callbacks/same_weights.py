"""DDP helpers: gather a tensor from every rank, and the end-of-run check that every rank holds the same weights."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from model.checkpoint import weights_digest


def gather(trainer: pl.Trainer, t: Tensor, device: torch.device) -> list[Tensor]:
    """[t of rank 0, t of rank 1, ...] on the CPU; [t] on one process. Collective: every rank must call it."""
    if trainer.world_size == 1:
        return [t.cpu()]
    # the tensor travels on the module's device (NCCL moves only GPU tensors) and comes back to the CPU
    return [part.clone() for part in trainer.strategy.all_gather(t.to(device)).cpu()]  # own storage each


class SameWeightsOnEveryRank(pl.Callback):
    """At the end of training, compare the weights of all ranks; the digests go into the final checkpoint.

    DDP keeps the networks in step by averaging gradients and the EMA by updating from equal weights; this makes
    that checkable (and warns if a rank drifted, e.g. a non-deterministic layer or a rank-dependent update).
    """

    def __init__(self) -> None:
        self.digests: list[str] = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mine = torch.tensor(list(bytes.fromhex(weights_digest(pl_module))), dtype=torch.uint8)
        self.digests = [bytes(d.tolist()).hex() for d in gather(trainer, mine, pl_module.device)]
        if len(set(self.digests)) > 1:
            rank_zero_warn(f"the weights differ between the {len(self.digests)} DDP ranks at the end of training; "
                           f"the checkpoint holds rank zero's")

    def state_dict(self) -> dict[str, Any]:
        return {"digests": list(self.digests)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # a check of one run's end: nothing to carry into the next
