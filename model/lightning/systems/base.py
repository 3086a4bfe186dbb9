"""What both Lightning systems share: the stored config, the kind tag, the non-finite guard, channels_last."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from model.checkpoint import CONFIG_KEY, EXTRA_KEY, KIND_KEY, Kind
from model.cli_config import from_dict
from model.compat import should_update_logs
from model.config import Config
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

    @property
    def stage_trainer(self):
        """This stage's TrainerConfig (`vae.trainer` or `denoiser.trainer`)."""
        return getattr(self.cfg, self.kind).trainer

    def setup(self, stage: str) -> None:
        if self.stage_trainer.channels_last:  # convolutions then run in NHWC, whatever layout the inputs have
            self.to(memory_format=torch.channels_last)
        if self.stage_trainer.compile:
            for module in self.trained_networks():
                module.compile()  # in place: the state dict keeps its keys, so checkpoints stay interchangeable

    def trained_networks(self) -> list[torch.nn.Module]:
        """The networks this stage trains (what `trainer.compile` compiles)."""
        return []

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

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip each parameter group's gradient norm to `trainer.gradient_clip_val` (None: no clipping) and drop the
        update when a norm is not finite (a NaN/Inf gradient of a finite loss) or the loss was not.

        Lightning calls this after the gradients are all-reduced (and unscaled under 16-mixed), right before the
        optimiser step, so every rank takes the same branch. One fused norm per group serves both the clip and the
        check (no per-parameter work in Python); without gradients the optimiser leaves every parameter and its
        moments as they were. Groups are clipped apart (the VAE and its discriminator), so one network's large
        gradients do not shrink the other's.
        """
        groups = [[p for p in group["params"] if p.grad is not None] for group in optimizer.param_groups]
        groups = [params for params in groups if params]
        if not groups:
            return
        norms = [torch.nn.utils.clip_grad_norm_(params, gradient_clip_val or float("inf")) for params in groups]
        bad_grads = not bool(torch.isfinite(torch.stack(norms)).all())
        if self.skip_update or bad_grads:
            for params in groups:
                for p in params:
                    p.grad = None
            if not self.skip_update:
                self.count_bad_step("gradient")
        else:
            self.bad_steps_in_a_row = 0
        self.skip_update = False

    def is_logging_step(self) -> bool:
        """True on the steps whose values the logger writes (every `trainer.log_every_n_steps`).

        A `self.log` call costs 1-2 ms in Lightning on a CPU (it moves its metric state each time), so values are
        logged only on these steps; metrics.csv gets the same rows. Lightning's own test is asked, not
        `global_step`: its step count can run one ahead of `global_step` until ContinuousLogs aligns it.
        """
        return should_update_logs(self.trainer)

    def log_train_loss(self, loss: Tensor) -> None:
        """train/loss: every step while a progress bar shows it, else on the steps the logger writes."""
        if self.trainer.progress_bar_callback is not None or self.is_logging_step():
            self.log("train/loss", loss, on_step=True, prog_bar=True)

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
