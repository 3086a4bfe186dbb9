"""Sample quality during training: every `trainer.fid_every_n_steps` optimiser steps the denoiser draws
`trainer.fid_num_samples` samples (split across the DDP ranks), and the pixel metrics of `model.metrics` score them
against real images: `val/pixel_fd`, `val/kid`, `val/precision`, `val/recall`, `val/coverage`, and with
`trainer.fid_features` the FID `val/fid` (Inception-v3 features, or a digits classifier's).
`trainer.best_by: "val/pixel_fd"` (or "val/fid", ...) keeps best.ckpt by it.

The reference is fixed for the whole run: up to `fid_real_pool` real images (training and validation) less
`fid_num_samples` of them kept out as the floor, area-downsampled pixels on the reference's principal components
(fitted once), so every evaluation is scored the same way. The floor, real images scored exactly as the samples
are, is logged beside them (`val/floor_pixel_fd`, `val/floor_precision`, ...): a perfect generator reaches it, not
0. `val/elapsed_s` is the wall time since training started, evaluations included: quality against time shows when a
run has converged (`python -m model.scripts.plots quality`). The samples use the EMA network, the config's sampler,
steps and spacing, and a fixed seed: the figures of two steps differ only by the network.
"""
from __future__ import annotations

import time
from typing import Optional

import pytorch_lightning as pl
import torch

from data.registry import source_images
from model.metrics.budget import PixelProtocol, score
from model.metrics.pixel import PCAProjection, pixel_vectors


class QualityDuringTraining(pl.Callback):
    def __init__(self, every_n_steps: int, num_samples: int, real_pool: int, fid_features: Optional[str]) -> None:
        self.every, self.n, self.real_pool = every_n_steps, num_samples, real_pool
        self.reference: Optional[torch.Tensor] = None
        self.projection: Optional[PCAProjection] = None
        self.protocol: Optional[PixelProtocol] = None
        self.last_step = -1
        self.floor: dict[str, float] = {}
        self.started = time.perf_counter()
        self.extractor = None if fid_features is None else "inception" if fid_features == "inception" else "classifier"
        self.fid = self.make_fid(fid_features)  # here, before the run writes anything: missing weights stop it

    def make_fid(self, fid_features: Optional[str]):
        """The FID metric of trainer.fid_features (None: none)."""
        if self.extractor is None:
            return None
        from model.metrics.fid import INCEPTION_FILE, hub_weights, make_fid

        if self.extractor == "classifier":
            from model.classifier import load_classifier

            return make_fid("classifier", load_classifier(fid_features)[0])
        if not hub_weights().is_file():  # compute nodes are often offline: no download attempt in the middle of a run
            from model.errors import UserError

            raise UserError(f"trainer.fid_features inception needs torch-fidelity's {INCEPTION_FILE} at "
                            f"{hub_weights()} before training; place it there, or set trainer.fid_features to a "
                            f"model.scripts.train_classifier file or null")
        return make_fid("inception")

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        from model.evaluation import pixel_size, real_pool

        images = source_images(trainer.datamodule)
        pool = real_pool(images, self.real_pool, seed=0)
        self.protocol = PixelProtocol(size=pixel_size(images))
        vectors = pixel_vectors(pool, self.protocol.size)
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.protocol.seed))
        held = min(self.n, len(pool) // 2)  # the floor: as many real images as samples, none in the reference
        self.reference = vectors[order[held:]]
        self.projection = PCAProjection.fit(self.reference, self.protocol.components)
        floor = score(self.reference, vectors[order[:held]], self.projection, self.protocol)
        self.floor = {f"val/floor_{name}": float(value) for name, value in floor.items()}
        if self.fid is not None:  # the real statistics, once per run
            from model.metrics.fid import update

            self.fid = self.fid.to(pl_module.device)
            update(self.fid, pool.split(256), real=True, extractor=self.extractor)

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, *args) -> None:
        step = trainer.global_step
        if step == self.last_step or step % self.every:
            return
        self.last_step = step
        samples = self.draw(trainer, pl_module)  # (n, C, H, W) in [-1, 1], every rank's
        metrics = score(self.reference, pixel_vectors(samples, self.protocol.size), self.projection, self.protocol)
        logged = {**{f"val/{name}": float(value) for name, value in metrics.items()}, **self.floor}
        if self.fid is not None:
            from model.metrics.fid import update

            self.fid.reset()  # the generated statistics only (reset_real_features=False)
            update(self.fid, samples.split(256), real=False, extractor=self.extractor)
            logged["val/fid"] = float(self.fid.compute())
        logged["val/elapsed_s"] = time.perf_counter() - self.started  # the evaluation's own time included
        pl_module.log_dict(logged, on_step=True, on_epoch=False, logger=False)  # for best.ckpt's monitor
        if trainer.is_global_zero:  # one row, on the row of the batch the evaluation follows (0-based)
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=step - 1)

    @torch.no_grad()
    def draw(self, trainer: pl.Trainer, pl_module) -> torch.Tensor:
        """This rank's share of the samples (seed + rank), gathered from every rank, on the CPU."""
        from model.lightning.callbacks.same_weights import gather

        rank, world = trainer.global_rank, trainer.world_size
        mine = -(-self.n // world)  # every rank draws as many (all_gather needs one shape); the surplus is dropped
        labels = torch.arange(rank, rank + mine * world, world)[:mine] % pl_module.num_classes \
            if pl_module.num_classes else None
        was_training = pl_module.training
        pl_module.eval()
        images = pl_module.draw(mine, labels, torch.Generator().manual_seed(pl_module.cfg.seed + rank))
        pl_module.train(was_training)
        return torch.cat(gather(trainer, images, pl_module.device))[: self.n]
