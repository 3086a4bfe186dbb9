"""What both Lightning systems share: the stored config, the kind tag, the non-finite guard, AdamW with warm-up."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from model.checkpoint import CONFIG_KEY, EXTRA_KEY, KIND_KEY, Kind
from model.config import Config, OptimConfig, from_dict
from model.errors import UserError

MAX_BAD_STEPS = 20  # consecutive skipped (NaN/Inf) steps after which the run stops: it is not recovering


class NonFiniteTraining(UserError):
    """The loss or the gradients stayed NaN/Inf; the run stops with the last good checkpoint on disk."""


class System(pl.LightningModule):
    """Base of the VAE and denoiser systems: holds the run config and tags every checkpoint it writes."""

    kind: Kind

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg: Config = from_dict(config)
        self.bad_steps_in_a_row = 0  # NaN/Inf steps since the last good one
        self.skipped_steps = 0  # NaN/Inf steps in this process, logged as train/skipped_steps
        self.skip_update = False  # a non-finite loss was seen since the last optimiser step

    def extra(self) -> dict[str, Any]:
        """Plain values besides the config that rebuild this system from its checkpoint."""
        return {}

    # ----- NaN / Inf: a bad step is skipped, never applied, so neither weights, EMA nor checkpoints hold NaN -----
    def finite_or_skip(self, loss: Tensor) -> Tensor:
        """`loss`; when it is NaN/Inf on any rank, a zero stand-in whose gradients the next update drops.

        Backward still runs on a bad step because under DDP every rank must join the gradient all-reduce (and
        Lightning refuses a skipped training_step there); the finiteness flag is reduced across ranks so all
        ranks skip the same update.
        """
        finite = torch.isfinite(loss.detach()).float()
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        if bool(finite):
            return loss
        self.skip_update = True  # sticky until the optimiser step, so gradient accumulation skips it too
        self.count_bad_step("loss")
        return loss.nan_to_num(0.0, 0.0, 0.0) * 0.0

    def on_before_optimizer_step(self, optimizer) -> None:
        # Gradients are already all-reduced here, so every rank takes the same branch. A finite loss can still
        # give Inf gradients; dropping all gradients makes the optimiser leave every parameter (and its moments)
        # as it was. One stacked check: a single device sync, not one per parameter.
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad_grads = bool(params) and not bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all())
        if self.skip_update or bad_grads:
            for p in params:
                p.grad = None
            if not self.skip_update:
                self.count_bad_step("gradient")
        elif params:
            self.bad_steps_in_a_row = 0
        self.skip_update = False

    def count_bad_step(self, what: str) -> None:
        self.bad_steps_in_a_row += 1
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True)
        if self.bad_steps_in_a_row >= MAX_BAD_STEPS:
            raise NonFiniteTraining(
                f"the {what} was NaN or Inf for {MAX_BAD_STEPS} steps in a row (step {self.global_step}), so training "
                f"stopped; the checkpoints on disk are from before; lower optim.lr or check the data for NaN")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # unreachable while bad steps are skipped; a last line of defence for the files users keep
            raise NonFiniteTraining(f"refusing to write a checkpoint with NaN/Inf in {bad[0]}; the earlier "
                                    f"checkpoints are intact, resume from one with a lower optim.lr")
        checkpoint[KIND_KEY] = self.kind
        checkpoint[CONFIG_KEY] = self.hparams["config"]
        checkpoint[EXTRA_KEY] = self.extra()


def adamw_with_warmup(params, optim: OptimConfig) -> dict[str, Any]:
    """AdamW and a LambdaLR that ramps the rate linearly over `warmup_steps`, then holds it."""
    opt = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    warmup = max(optim.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
