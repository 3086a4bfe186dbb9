"""Periodic image grids (reconstructions or samples), written on rank zero as PNGs and to the loggers."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from data.captions import batch_parts
from model.images import grid_array, save_grid


class ImageGrid(pl.Callback):
    """Every `every_n_steps` optimiser steps, write `<folder>/step<N>.png` from the system's `image_grid_rows`.

    The rows are built from one fixed validation batch (the first `num_images` images), so grids of
    different steps show the same inputs.
    """

    def __init__(self, folder: Path, every_n_steps: int, num_images: int = 8) -> None:
        self.folder = Path(folder)
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self._last_step = -1

    def _fixed_batch(self, trainer: pl.Trainer) -> tuple[torch.Tensor, list[str] | None]:
        """The first images of the validation split and their captions (None without)."""
        x, _, texts = batch_parts(next(iter(trainer.datamodule.val_dataloader())))
        return x[: self.num_images], None if texts is None else list(texts[: self.num_images])

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        x, texts = self._fixed_batch(trainer)
        x = x.to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        rows = pl_module.image_grid_rows(x, texts)
        pl_module.train(was_training)
        grid = torch.cat(rows)
        save_grid(grid, self.folder / f"step{trainer.global_step:07d}.png", nrow=x.shape[0])
        send_to_loggers(trainer, grid_array(grid, nrow=x.shape[0]), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step and step > 0:
            self._last_step = step
            self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.every_n_steps and trainer.global_step != self._last_step:
            self._write(trainer, pl_module)


def send_to_loggers(trainer: pl.Trainer, image, step: int) -> None:
    """The grid (H, W, C uint8) to TensorBoard (`add_image`) and W&B (`log_image`) as well: the CSV logger keeps
    numbers only, the PNGs stay in images/ either way."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("images/grid", image, step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image("images/grid", [image], step=step)
