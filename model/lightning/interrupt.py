"""Ctrl-C and SIGTERM stop training at the next step boundary, and the stage saves a resumable last.ckpt.

Lightning's own handling raises from wherever the signal lands (possibly inside an optimiser step) and exits;
here the handler only sets a flag, the step in flight finishes, `trainer.should_stop` ends `fit` normally, and
`train_stage` writes last.ckpt as after any run, then raises `Interrupted` (exit 130 for Ctrl-C, 143 for SIGTERM).
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional

import pytorch_lightning as pl

from model.errors import Interrupted

SIGNALS = {signal.SIGINT: ("Ctrl-C", 130), signal.SIGTERM: ("SIGTERM", 143)}


class GracefulStop(pl.Callback):
    """Turns SIGINT/SIGTERM into `trainer.should_stop` at the end of the current training batch."""

    def __init__(self) -> None:
        self.received: Optional[signal.Signals] = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user insists
        self.received = signal.Signals(signum)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python lets only the main thread set handlers
        for sig in SIGNALS:  # Lightning registers its own at fit start, before this hook: these replace them
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.received is not None:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def interrupted(self, step: int, last: str) -> Optional[Interrupted]:
        """The exception to raise after saving, or None when no signal came."""
        if self.received is None:
            return None
        name, code = SIGNALS[self.received]
        return Interrupted(f"stopped by {name} at step {step}; saved {last}; resume with the same command plus "
                           f"--load {last}", code)
