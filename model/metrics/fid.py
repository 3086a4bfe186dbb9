"""Fréchet distance (Heusel et al. 2017) through torchmetrics, with an Inception-v3 or a domain feature extractor.

FID figures are only comparable under one protocol, so every choice is fixed here and reported by `protocol`:
- images reach the metric as uint8 (quantised exactly like the PNG files we write), real and generated alike;
- Inception-v3 ("inception-v3-compat", torch-fidelity's port of the TF weights every paper uses): grey images are
  repeated to RGB and torchmetrics resizes to 299x299 (bilinear with antialias); features pooled to `features`;
- the domain extractor: a SmallCNN classifier trained by this package (`model.scripts.train_classifier`), its
  global-average-pooled penultimate vector, at the classifier's own input size (as sheet 004's AFHQ course did;
  it is what works offline, and for 16 px digits it sees them at their own scale instead of upscaled 19x);
- feature sums and covariances are accumulated in float64 by torchmetrics.

The statistics of the real set depend only on the data and the extractor, so they are cached in a file keyed by
the data set, resolution, split and extractor (see `stats_file`), and a second evaluation skips the real pass.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn

from model.checkpoint import KIND_KEY, atomic_torch_save, load_torch_file, read_checkpoint
from model.compat import fid_real_states, set_fid_real_states
from model.errors import UserError

STATS_KIND = "fid_stats"
INCEPTION_FEATURES = (64, 192, 768, 2048)  # the pooling points torch-fidelity's Inception offers
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # the name torch-fidelity downloads to the hub cache
LOADER_ONLY = ("batch_size", "num_workers")  # data settings that do not change which images the real set holds


def images_to_uint8(x: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] → uint8 (B, C, H, W), rounded as `model.images.to_uint8` rounds for PNG files."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class ClassifierFeatures(nn.Module):
    """A SmallCNN's penultimate features of uint8 images at the classifier's own input size (B, feature_dim)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.feature_dim  # torchmetrics reads this instead of probing with a dummy image

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)  # BatchNorm must keep its running statistics: features independent of the batch

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.float() / 127.5 - 1.0)  # uint8 → [-1, 1], the classifier's input range


def hub_weights() -> Path:
    """Where torch-fidelity downloads the Inception weights to (and finds them next time)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_weights_help() -> str:
    return (f"place torch-fidelity's {INCEPTION_FILE} at {hub_weights()} or pass --inception-weights FILE "
            f"(or measure with a domain extractor: --classifier runs/classifiers/<data>.pt)")


def check_inception_weights(path: Optional[str]) -> None:
    """A given weights file must be a plain state dict (read with weights_only=True: a pickle never runs)."""
    if path is None:
        return
    try:
        state = load_torch_file(Path(path))
    except UserError as err:
        raise UserError(f"Inception weights: {err}") from err
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise UserError(f"{path} is not torch-fidelity's Inception-v3 state dict; {inception_weights_help()}")


def require_inception_on_disk(path: Optional[str]) -> None:
    """Inception features where no download may happen: the weights must be a given file or already in the hub
    cache; otherwise one line that names the file and where to place it."""
    if path is None and not hub_weights().is_file():
        raise UserError(f"Inception features need the weights on disk: {inception_weights_help()}")
    check_inception_weights(path)


def inception_extractor(path: Optional[str], features: int = 2048) -> nn.Module:
    """torchmetrics' Inception-v3 (the network its FID uses, `make_fid`) from weights on disk: uint8 (B, 3, H, W) →
    (B, features), resized to 299x299 inside."""
    from model.compat import fid_extractor

    require_inception_on_disk(path)
    return fid_extractor(make_fid("inception", inception_weights=path, inception_features=features))


def make_fid(extractor: str, classifier: Optional[nn.Module] = None, inception_weights: Optional[str] = None,
             inception_features: int = 2048):
    """A torchmetrics FrechetInceptionDistance that keeps its real statistics across `reset` (one per guidance w)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if extractor == "classifier":
        return FrechetInceptionDistance(feature=ClassifierFeatures(classifier), reset_real_features=False)
    if inception_features not in INCEPTION_FEATURES:
        raise UserError(f"--inception-features must be one of {INCEPTION_FEATURES}, got {inception_features}")
    check_inception_weights(inception_weights)
    if inception_weights is None and not hub_weights().is_file():
        print(f"downloading the Inception-v3 weights for FID (~100 MB) to {hub_weights()}", flush=True)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's progress; a failure gets our one line below
            return FrechetInceptionDistance(feature=inception_features, reset_real_features=False,
                                            feature_extractor_weights_path=inception_weights)
    except ModuleNotFoundError as err:
        raise UserError("Inception FID needs torch-fidelity: pip install torch-fidelity "
                        "(it is in this package's dependencies; reinstall with pip install -e .)") from err
    except (OSError, RuntimeError, ValueError) as err:  # no network (URLError is an OSError), corrupt download
        raise UserError(f"Inception weights for FID could not be loaded ({str(err).splitlines()[0][:80]}); "
                        f"{inception_weights_help()}") from err


def to_metric_input(x: Tensor, extractor: str) -> Tensor:
    """[-1, 1] images → what the extractor reads: uint8, and 3 channels for Inception (grey repeated)."""
    x = images_to_uint8(x)
    if extractor == "inception" and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
    return x


@torch.no_grad()
def update(fid, batches: Iterable[Tensor], real: bool, extractor: str) -> None:
    """Feed [-1, 1] image batches (B, C, H, W) to the metric as real or generated."""
    device = fid.device
    for x in batches:
        fid.update(to_metric_input(x, extractor).to(device), real=real)


def file_digest(path: str, length: int = 12) -> str:
    """The first `length` hex digits of a file's SHA-256: names the exact weights an extractor used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def extractor_id(extractor: str, classifier_path: Optional[str], inception_weights: Optional[str],
                 inception_features: int) -> str:
    """A short name that changes whenever the features would: the extractor, its size and its weights' digest."""
    if extractor == "classifier":
        return f"classifier-{file_digest(classifier_path)}"
    weights = file_digest(inception_weights) if inception_weights else "torch-fidelity"
    return f"inception{inception_features}-{weights}"


def stats_file(cache_dir: str | Path, data_cfg, split: str, extractor: str) -> Path:
    """<cache>/<data>-<size>px-<split>-<extractor>-<digest of the data settings>.pt"""
    settings = {k: v for k, v in asdict(data_cfg).items() if k not in LOADER_ONLY}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{data_cfg.name}-{data_cfg.image_size}px-{split}-{extractor}-{digest}.pt"


def load_real_stats(fid, path: Path) -> bool:
    """Put cached real statistics into the metric; False when there is no cache file yet."""
    if not path.is_file():
        return False
    stats = read_checkpoint(path, expected=STATS_KIND)
    mine = fid_real_states(fid)
    if any(tuple(stats[name].shape) != tuple(value.shape) for name, value in mine.items()):
        raise UserError(f"cached FID statistics {path} have another feature size; delete the file to recompute it")
    set_fid_real_states(fid, stats)
    return True


def save_real_stats(fid, path: Path, protocol: dict[str, Any]) -> None:
    """Write the metric's real statistics (and how they were made) atomically, for the next evaluation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = {name: value.detach().cpu() for name, value in fid_real_states(fid).items()}
    atomic_torch_save({KIND_KEY: STATS_KIND, "protocol": protocol, **stats}, path)


def protocol(extractor: str, n_real: int, n_fake: int, image_shape: tuple[int, ...], classifier_path: Optional[str],
             inception_features: int, inception_weights: Optional[str]) -> dict[str, Any]:
    """Everything that must match for two FID figures to be comparable, as plain values."""
    c, h, w = image_shape
    if extractor == "inception":
        source = inception_weights or f"torch-fidelity's {INCEPTION_FILE}"
        feat = f"Inception-v3 (inception-v3-compat, {source}), {inception_features}-d pool features"
        resize = f"{h}x{w} → 299x299 bilinear with antialias" + (", grey repeated to RGB" if c == 1 else "")
    else:
        feat = f"domain classifier {classifier_path} (SmallCNN penultimate features)"
        resize = f"none ({h}x{w} is the classifier's input size)"
    return {"extractor": feat, "real_images": n_real, "generated_images": n_fake, "resize": resize,
            "dtype": "uint8 images; features and statistics in float64", "metric": "torchmetrics FrechetInceptionDistance"}


def real_image_count(fid) -> int:
    """How many real images the metric's statistics hold."""
    return int(fid_real_states(fid)["real_features_num_samples"])
