"""Judging a trained denoiser: draw samples, classify them, and measure its loss at fixed timesteps.

Shared by `model.scripts.evaluate` (FID, class accuracy, loss table, the toy's Chamfer distance) and
`model.scripts.demo_report` (class accuracy and the copy check). Plain functions over a loaded DenoiserSystem.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from model.errors import UserError


def balanced_labels(n: int, num_classes: int) -> Optional[Tensor]:
    """n class labels cycling 0, 1, ..., K-1 (every class equally often, ±1); None for an unconditional model."""
    return torch.arange(n) % num_classes if num_classes else None


@torch.no_grad()
def generate(system, n: int, labels: Optional[Tensor], cfg_scale: float, *, sampler: str, steps: Optional[int],
             seed: int, batch_size: int) -> Tensor:
    """n decoded samples (n, ...) on CPU, drawn `batch_size` at a time from one generator seeded with `seed`.

    Images come back in [-1, 1]; the 2-D toy's points as they are. The clip limit is the checkpoint's own.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        chunk = labels[start: start + m] if labels is not None else None
        z = system.sample(m, chunk, sampler=sampler, steps=steps, clip_limit=system.diff.clip_limit,
                          cfg_scale=cfg_scale, generator=gen)
        out.append(system.decode(z).cpu())
    return torch.cat(out)


def check_classifier_fits(clf, system, conditional: bool) -> None:
    """The classifier must read the denoiser's images; for class accuracy it must also know the same classes."""
    data = system.cfg.data
    theirs, ours = (clf.in_channels, clf.image_size), (data.channels, data.image_size)
    if conditional:
        theirs, ours = (clf.num_classes, *theirs), (system.num_classes, *ours)
    if theirs != ours:
        what = "(classes, channels, size)" if conditional else "(channels, size)"
        raise UserError(f"the classifier {what} {theirs} does not fit the denoiser's data {ours}; "
                        f"train one with python -m model.scripts.train_classifier on the denoiser's config")


@torch.no_grad()
def predict(clf, images: Tensor, device: str, batch_size: int = 500) -> Tensor:
    """The classifier's label for every image (N,)."""
    return torch.cat([clf(x.to(device)).argmax(1).cpu() for x in images.split(batch_size)])


def per_class_accuracy(pred: Tensor, labels: Tensor, num_classes: int) -> list[float]:
    """For each class k, the share of samples asked to be k that the classifier assigns to k."""
    return [float((pred[labels == k] == k).float().mean()) for k in range(num_classes)]


def loss_timesteps(T: int, count: int = 10) -> list[int]:
    """t = 1 and `count` evenly spaced steps up to T: the rows of the loss table."""
    return sorted({1, *(round(T * k / count) for k in range(1, count + 1))})


@torch.no_grad()
def loss_per_timestep(system, loader, timesteps: list[int]) -> list[float]:
    """The EMA network's mean loss over every item of `loader` at each t (fixed noise, see `timestep_losses`)."""
    total, count = torch.zeros(len(timesteps), dtype=torch.float64), 0
    for batch_idx, (x, y) in enumerate(loader):
        per_sample = system.timestep_losses(x.to(system.device), y.to(system.device), timesteps, batch_idx)
        total += per_sample.double().sum(1).cpu()
        count += x.shape[0]
    if count == 0:
        raise UserError("the loss table needs held-out items, but the validation split is empty; "
                        "set data.val_fraction > 0")
    return (total / count).tolist()
