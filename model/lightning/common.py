"""What both Lightning systems share: the stored config, the kind tag, and AdamW with linear warm-up."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from model.checkpoint import CONFIG_KEY, EXTRA_KEY, KIND_KEY, Kind
from model.config import Config, OptimConfig, from_dict


class System(pl.LightningModule):
    """Base of the VAE and denoiser systems: holds the run config and tags every checkpoint it writes."""

    kind: Kind

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg: Config = from_dict(config)

    def extra(self) -> dict[str, Any]:
        """Plain values besides the config that rebuild this system from its checkpoint."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[KIND_KEY] = self.kind
        checkpoint[CONFIG_KEY] = self.hparams["config"]
        checkpoint[EXTRA_KEY] = self.extra()


def adamw_with_warmup(params, optim: OptimConfig) -> dict[str, Any]:
    """AdamW and a LambdaLR that ramps the rate linearly over `warmup_steps`, then holds it."""
    opt = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    warmup = max(optim.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
