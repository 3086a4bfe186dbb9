"""Latent caching: encode the training set once with the frozen VAE instead of every epoch.

The cache holds posterior means of the un-flipped images, so random flips are off when it is on.
Validation still reads images (the system encodes them), so validation figures are unchanged.
"""
from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from data.captions import Captioned
from data.resumable import ResumableLoader, batches_done


class CachedLatents(pl.LightningDataModule):
    """Wraps an image datamodule; its training batches are (z, y) with z the raw latent posterior mean (and the
    captions, (z, y, texts), when the images have them)."""

    def __init__(self, images: pl.LightningDataModule, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.images = images
        self.encode = encode
        self.num_classes = images.num_classes
        self._train: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        self.images.setup(stage)
        # the training split without augmentation, in a fixed order
        plain = self.images.split_items("train")
        zs, ys, texts = [], [], []
        for x, y, *caption in DataLoader(plain, batch_size=self.images.cfg.batch_size, shuffle=False):
            zs.append(self.encode(x).cpu())
            ys.append(y)
            texts += caption[0] if caption else []
        latents = TensorDataset(torch.cat(zs), torch.cat(ys))
        self._train = Captioned(latents, texts) if self.images.cfg.captions else latents

    def train_dataloader(self) -> DataLoader:
        cfg = self.images.cfg
        return ResumableLoader(self._train, batch_size=cfg.batch_size, seed=cfg.seed,
                               batches_done=lambda: batches_done(self.trainer))

    def val_dataloader(self) -> DataLoader:
        return self.images.val_dataloader()
