"""Ctrl-C, SIGTERM and SIGUSR1 stop training at the next optimiser step, and the stage saves a resumable last.ckpt.

Lightning's own handling acts inside the signal handler, wherever the signal lands (possibly inside an optimiser
step, before the EMA update; under DDP its checkpoint barrier can meet a gradient all-reduce in flight). Here the
handler only sets a flag; at the end of the next optimiser step (not mid-way through gradient accumulation) the
ranks agree to stop, `trainer.should_stop` ends `fit` normally, and `train_stage` writes last.ckpt as after any
run, then raises `Interrupted` (exit 130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1). SLURM sends SIGUSR1 before
a time limit (`--signal=SIGUSR1@90`) and SIGTERM on preemption or `scontrol requeue`; see model/lightning/slurm.py.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from model.errors import Interrupted

SIGNALS = {signal.SIGINT: ("Ctrl-C", 130), signal.SIGTERM: ("SIGTERM", 143), signal.SIGUSR1: ("SIGUSR1", 138)}


class GracefulStop(pl.Callback):
    """Turns SIGINT/SIGTERM/SIGUSR1 into `trainer.should_stop` at the end of the current optimiser step."""

    def __init__(self) -> None:
        self.received: Optional[signal.Signals] = None
        self._previous: dict[signal.Signals, Any] = {}
        self._step_seen = -1

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user insists
        self.received = signal.Signals(signum)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step_seen = trainer.global_step
        if threading.current_thread() is not threading.main_thread():
            return  # Python lets only the main thread set handlers
        for sig in SIGNALS:  # Lightning registers its own at fit start, before this hook: these replace them
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self._step_seen:
            return  # mid-way through gradient accumulation: stopping here would lose the micro-batches so far
        self._step_seen = trainer.global_step
        signum = int(self.received or 0)
        if trainer.world_size > 1:  # a signal may reach the ranks a step apart: all stop at the first
            flag = torch.tensor(float(signum), device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if signum:
            self.received = signal.Signals(signum)
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def interrupted(self, step: int, last: str, requeued: Optional[str] = None) -> Optional[Interrupted]:
        """The exception to raise after saving, or None when no signal came."""
        if self.received is None:
            return None
        name, code = SIGNALS[self.received]
        then = requeued or f"resume with the same command plus --load {last}"
        return Interrupted(f"stopped by {name} at step {step}; saved {last}; {then}", code)
