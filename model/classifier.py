"""A small CNN classifier: judges generated samples (does a "3" look like a 3?) and extracts domain features.

`SmallCNN.features` (the global-average-pooled penultimate vector) serves as an in-domain feature extractor
for FID-style statistics where Inception weights are unavailable or ill-suited (8x8 digits upscaled).
Checkpoints are a plain dict (kind tag, shapes, meta, state_dict) read back with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.checkpoint import KIND_KEY, atomic_torch_save, read_checkpoint
from model.errors import UserError

KIND = "classifier"
SHIFT_FRACTION = 0.1  # augmentation: random translations of up to 10 % of the side (3 px at 32 px)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU. BatchNorm rather than GroupNorm: on digits GN barely learned in 2 epochs where BN
    reached ~99 %; in eval mode BN uses its running statistics, so features do not depend on the batch."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """Two levels of (conv-BN-ReLU x2, 2x2 max-pool), global average pool, linear. Input (B, C, H, W) in [-1, 1]."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        if in_channels <= 0 or num_classes < 2 or image_size < 4 or width <= 0:
            raise UserError(f"classifier needs in_channels > 0, num_classes >= 2, image_size >= 4 and width > 0, "
                            f"got {in_channels}, {num_classes}, {image_size}, {width}")
        self.in_channels, self.num_classes, self.image_size, self.width = in_channels, num_classes, image_size, width
        self.feature_dim = 2 * width
        self.body = nn.Sequential(
            conv_block(in_channels, width), conv_block(width, width), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            conv_block(width, 2 * width), conv_block(2 * width, 2 * width), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
        )
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate vector (B, 2 * width): global average pool of the last conv level."""
        return self.body(x).mean(dim=(2, 3))  # (B, 2w)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.features(x))


def random_translate(x: Tensor, max_shift: float) -> Tensor:
    """Shift every image by its own random (dx, dy) in [-max_shift, max_shift] pixels; uncovered pixels get -1.

    Bilinear resampling (`affine_grid` + `grid_sample`) on x + 1, so the zero padding becomes the -1 background.
    """
    B, _, H, W = x.shape
    shift = (torch.rand(B, 2) * 2 - 1) * max_shift  # (B, 2) in pixels
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = shift[:, 0] * 2 / W, shift[:, 1] * 2 / H  # normalised coordinates span 2
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    """Share of correctly classified items; nan for an empty loader (no validation split)."""
    model.eval()
    correct, total = 0, 0
    for x, y, *_ in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total if total else math.nan


def train_classifier(datamodule, epochs: int, lr: float, seed: int) -> tuple[SmallCNN, float]:
    """Train a SmallCNN on the train split (AdamW, cosine rate, random translations); (model, val accuracy).

    Deterministic for a given seed (it seeds initialisation, shuffling and augmentation in a forked RNG, so the
    caller's global RNG state is left as it was).
    """
    dm = datamodule
    dm.prepare_data()
    dm.setup("fit")
    if dm.num_classes < 2:
        raise UserError(f"data set {dm.cfg.name} is unlabelled (or has < 2 classes), but the classifier needs "
                        f"labels; set data.labels true (hf: data.hf_label_column)")
    if epochs <= 0 or lr <= 0:
        raise UserError(f"epochs and lr must be > 0, got epochs={epochs}, lr={lr}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(dm.channels, dm.num_classes, dm.image_size)
        loader = torch.utils.data.DataLoader(dm.train_set, batch_size=dm.cfg.batch_size, shuffle=True)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
        for _ in range(epochs):
            model.train()
            for x, y, *_ in loader:
                loss = F.cross_entropy(model(random_translate(x, SHIFT_FRACTION * dm.image_size)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        acc = accuracy(model, dm.val_dataloader())  # inside: iterating a loader draws from the global RNG
    return model.eval(), acc


def save_classifier(path: str | Path, model: SmallCNN, meta: dict[str, Any]) -> Path:
    """Write {kind, shapes, meta (plain JSON-like values), state_dict} with torch.save (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {KIND_KEY: KIND, "in_channels": model.in_channels, "num_classes": model.num_classes,
            "image_size": model.image_size, "width": model.width, "meta": dict(meta),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    atomic_torch_save(ckpt, path)
    return path


def load_classifier(path: str | Path) -> tuple[SmallCNN, dict[str, Any]]:
    """(model in eval mode on CPU, meta) from a file written by `save_classifier`; UserError for anything else."""
    if not Path(path).exists():
        raise UserError(f"classifier {path} does not exist; train one with python -m model.scripts.train_classifier")
    ckpt = read_checkpoint(path, expected=KIND)
    try:
        model = SmallCNN(ckpt["in_channels"], ckpt["num_classes"], ckpt["image_size"], ckpt["width"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError, TypeError) as err:
        raise UserError(f"classifier {path} is incomplete or does not fit SmallCNN "
                        f"({str(err).splitlines()[0][:120]}); retrain it with model.scripts.train_classifier") from err
    return model.eval(), dict(ckpt.get("meta", {}))
