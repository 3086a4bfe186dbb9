"""The CSV logger of a resumed stage keeps what the earlier start logged (Lightning's deletes metrics.csv).

A requeued job resumes from its last checkpoint, so `metrics.csv` must hold one row per logged step across all
starts: the rows logged before the checkpoint's step stay, the rows after it (steps the new start trains again,
e.g. after a SIGKILL) are dropped, and the new rows are appended under the same header.
"""
from __future__ import annotations

import csv

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
