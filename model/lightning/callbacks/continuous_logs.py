"""The logs of a resumed stage: they continue the earlier start's, one row per logged step across all starts.

- The CSV logger keeps what the earlier start logged (Lightning's deletes metrics.csv): the rows logged before the
  checkpoint's step stay, the rows after it (steps the new start trains again, e.g. after a SIGKILL) are dropped,
  and the new rows are appended under the same header (`model.compat.resumed_csv_logger`).
- The step the loggers write (Lightning's count of optimiser steps for logging) is set to `global_step` when
  training (re)starts: restored from a checkpoint written after validation at the end of `fit`, Lightning's
  count comes back one ahead, and every later row would carry the step after its own.
- The rows up to a checkpoint's step reach the disk soon after the checkpoint does.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from model.compat import set_logged_step


class ContinuousLogs(pl.Callback):
    """Logs that a later start continues without a gap or a shifted step.

    - Before the first batch of a (re)started fit, the step the loggers write is set to `global_step` (one
      optimiser, automatic optimisation: Lightning increments both once per optimiser step).
    - Once the step a checkpoint was saved at has been logged (at the next batch start), the loggers write their
      buffered rows: Lightning's CSV logger otherwise flushes every 100 steps, and a run killed in between would
      resume from the checkpoint without the rows before it.
    """

    def __init__(self) -> None:
        self.aligned = False
        self.flush = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.flush = True

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self.aligned:  # after Lightning's own restart bookkeeping, which runs when the epoch loop resets
            set_logged_step(trainer, trainer.global_step)
            self.aligned = True
        if self.flush:
            for logger in trainer.loggers:
                logger.save()
            self.flush = False
