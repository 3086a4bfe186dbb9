"""A progress bar over optimiser steps: the stages train for `max_steps`, and epochs of a small data set mean nothing.

    denoiser:  42%|████▏     | 800/1900 [01:17<01:46, 10.3 step/s, loss=0.212]

One bar per stage on rank zero: step / max_steps, steps per second, time left and the training loss; it starts at
the resumed step after a restart. Validation runs without a bar of its own.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks.progress import ProgressBar
from tqdm import tqdm


class StepProgressBar(ProgressBar):
    """tqdm over `trainer.global_step`, with the metrics logged with prog_bar=True (train/loss) as `loss`."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self.bar: Optional[tqdm] = None
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero:
            self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc=self.stage, unit=" step",
                            dynamic_ncols=True, file=sys.stdout, smoothing=0.05)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        loss = trainer.progress_bar_metrics.get("train/loss")
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
