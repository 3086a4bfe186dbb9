"""Every private or undocumented attribute of Lightning, torchmetrics and torch that the package relies on.

Exact resume and the cached FID statistics reach past the public APIs in a few places; they all go through this
module, each with the reason, so that an upgrade that moves one breaks here, and `missing()` (run by
tests/test_compat.py) names what moved. The frameworks are imported inside the functions, so importing this module
imports no Lightning (sampling and evaluation never need it).

Checked against pytorch-lightning 2.6, torchmetrics 1.9 and torch 2.14 (the ranges in pyproject.toml).
"""
from __future__ import annotations

import csv
from typing import Any

# ----- Lightning: the training loop ------------------------------------------------------------------------------


def should_update_logs(trainer) -> bool:
    """Whether the logger writes the values of this step: Lightning decides (every `log_every_n_steps`, by its own
    count of stepped batches), and values logged on other steps are dropped. Asked so that the systems call
    `self.log` (1-2 ms each on a CPU) only on the steps that are written. Private: `_LoggerConnector`."""
    return trainer._logger_connector.should_update_logs


def set_logged_step(trainer, step: int) -> None:
    """Set the step the loggers write (Lightning's count of optimiser steps for logging). After a restart from a
    checkpoint written at the end of `fit`, Lightning restores it one ahead of `global_step`; resumed logs must carry
    the same step numbers as an uninterrupted run. Private: `_TrainingEpochLoop._batches_that_stepped`."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


def batches_processed(trainer) -> int:
    """Batches of the current epoch the fit loop has trained on: what a resumable data loader saves as its
    position. Internal (not private) loop API: `_TrainingEpochLoop.batch_progress`."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


# ----- Lightning: the CSV logger of a resumed run ------------------------------------------------------------------


def resumed_csv_logger(save_dir: str, resume_step: int, **kwargs):
    """A CSVLogger that keeps the rows an earlier start logged before `resume_step` (Lightning's deletes the file).

    Lightning's `ExperimentWriter.__init__` calls `_check_log_dir_exists`, which removes an existing metrics.csv;
    ours keeps the earlier rows instead. `CSVLogger.experiment` builds the writer lazily into `_experiment`. Private:
    `ExperimentWriter._check_log_dir_exists`, `._fs`, `.metrics_keys`, `CSVLogger._experiment`.
    """
    from lightning_fabric.loggers.logger import rank_zero_experiment
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class KeepEarlierRows(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if not self._fs.isfile(self.metrics_file_path):
                return
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                rows = [row for row in reader if int(row["step"]) < resume_step]
                fields = list(reader.fieldnames or [])
            self.metrics_keys = sorted(fields)  # Lightning's column order; new keys rewrite the header, rows kept
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)

    class ResumedCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                self._experiment = KeepEarlierRows(self.log_dir)
            return self._experiment

    return ResumedCSVLogger(save_dir, **kwargs)


# ----- torch -------------------------------------------------------------------------------------------------------


def lerp_all_(targets: list, sources: list, weight: float) -> None:
    """targets[i] += weight * (sources[i] - targets[i]) for every pair in one fused kernel per dtype and device:
    the EMA update of a network's parameters. Private by name, stable since torch 1.13: `torch._foreach_lerp_`."""
    import torch

    torch._foreach_lerp_(targets, sources, weight)


def inductor_cache_dir():
    """The folder torch.compile's inductor caches compiled kernels in (a benchmark says whether it was empty), or None
    where this torch has no such function. Private: `torch._inductor.runtime.cache_dir_utils.cache_dir`."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return None
    return cache_dir()


# ----- torchmetrics ------------------------------------------------------------------------------------------------

FID_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def fid_real_states(fid) -> dict[str, Any]:
    """The real-image statistics of a torchmetrics FrechetInceptionDistance, to cache them between evaluations.
    Undocumented metric states (`add_state` names)."""
    return {name: getattr(fid, name) for name in FID_REAL_STATES}


def set_fid_real_states(fid, states: dict[str, Any]) -> None:
    for name in FID_REAL_STATES:
        setattr(fid, name, states[name].to(getattr(fid, name)))


def fid_extractor(fid):
    """The feature network a FrechetInceptionDistance built (Inception-v3 with its weights loaded), to score other
    feature statistics with the same features. Undocumented attribute: `inception`."""
    return fid.inception


# ----- the check ---------------------------------------------------------------------------------------------------


def missing() -> list[str]:
    """What of the above the installed frameworks no longer have, one line each (empty when all is in place)."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter
    from torchmetrics.image.fid import FrechetInceptionDistance

    problems = []
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=1, accelerator="cpu", devices=1)
    for what, get in (
        ("Trainer._logger_connector.should_update_logs", lambda: should_update_logs(trainer)),
        ("Trainer.fit_loop.epoch_loop._batches_that_stepped", lambda: trainer.fit_loop.epoch_loop._batches_that_stepped),
        ("Trainer.fit_loop.epoch_loop.batch_progress.current.processed", lambda: batches_processed(trainer)),
    ):
        try:
            value = get()
            if not isinstance(value, (bool, int)):
                problems.append(f"{what} is a {type(value).__name__}, not a bool or int")
        except AttributeError as err:
            problems.append(f"{what}: {err}")
    for owner, names in ((ExperimentWriter, ("_check_log_dir_exists",)), (CSVLogger, ("experiment",)),
                         (torch, ("_foreach_lerp_",))):
        problems += [f"{getattr(owner, '__name__', owner)}.{n} is gone" for n in names if not hasattr(owner, n)]
    if inductor_cache_dir() is None:
        problems.append("torch._inductor.runtime.cache_dir_utils.cache_dir is gone (benchmarks.speed_knobs)")
    inits = [vars(k)["__init__"].__code__.co_names for k in ExperimentWriter.__mro__
             if hasattr(vars(k).get("__init__"), "__code__")]
    if not any("_check_log_dir_exists" in names and "metrics_file_path" in names and "_fs" in names for names in inits):
        problems.append("ExperimentWriter's __init__ no longer sets _fs and metrics_file_path and calls "
                        "_check_log_dir_exists (resumed CSV logs)")
    fid = FrechetInceptionDistance(feature=torch.nn.Flatten(), reset_real_features=False,
                                   input_img_size=(1, 2, 2))
    problems += [f"FrechetInceptionDistance.{n} is gone" for n in FID_REAL_STATES if not hasattr(fid, n)]
    if not isinstance(getattr(fid, "inception", None), torch.nn.Flatten):
        problems.append("FrechetInceptionDistance.inception no longer holds its feature network (demo_report "
                        "--inception)")
    return problems
