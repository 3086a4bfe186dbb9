"""The logs of a resumed stage: they continue the earlier start's, one row per logged step across all starts.

- The CSV logger keeps what the earlier start logged (Lightning's deletes metrics.csv): the rows logged before the
  checkpoint's step stay, the rows after it (steps the new start trains again, e.g. after a SIGKILL) are dropped,
  and the new rows are appended under the same header.
- The step the loggers write (Lightning's count of optimiser steps for logging) is set to `global_step` when
  training (re)starts: restored from a checkpoint written after validation at the end of `fit`, Lightning's
  count comes back one ahead, and every later row would carry the step after its own.
- The rows up to a checkpoint's step reach the disk soon after the checkpoint does.
"""
from __future__ import annotations

import csv
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class KeepEarlierRows(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv keeps its rows with step < `resume_step`."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by __init__, where Lightning deletes the file
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if int(row["step"]) < self.resume_step]
            fields = list(reader.fieldnames or [])
        self.metrics_keys = sorted(fields)  # Lightning's column order; new keys rewrite the header, keeping these rows
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class ResumedCSVLogger(CSVLogger):
    """CSVLogger for a stage resumed from a checkpoint at `resume_step`."""

    def __init__(self, *args, resume_step: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = KeepEarlierRows(self.log_dir, self.resume_step)
        return self._experiment


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
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
            self.aligned = True
        if self.flush:
            for logger in trainer.loggers:
                logger.save()
            self.flush = False
