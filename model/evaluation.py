"""Judging a trained denoiser: draw samples, classify them, and measure its loss at fixed timesteps.

Shared by `model.scripts.evaluate` (FID, class accuracy, loss table, the toy's Chamfer distance) and
`model.scripts.demo_report` (class accuracy and the copy check). Plain functions over a loaded `model.pipeline.LatentDiffusionPipeline`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from model.errors import UserError


def balanced_labels(n: int, num_classes: int) -> Optional[Tensor]:
    """n class labels cycling 0, 1, ..., K-1 (every class equally often, ±1); None for an unconditional model."""
    return torch.arange(n) % num_classes if num_classes else None


def class_major_labels(num_classes: int, per_class: int) -> Tensor:
    """(num_classes * per_class,) labels in blocks: per_class of class 0, then of class 1, ... (one grid row each)."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def generate(pipe, n: int, labels: Optional[Tensor], spec, *, seed: int, batch_size: int) -> Tensor:
    """n decoded samples (n, ...) on CPU (`LatentDiffusionPipeline.generate`) drawn as the `SamplerSpec` says:
    images in [-1, 1], the 2-D toy's points as they are."""
    return pipe.generate(n, labels, spec, seed=seed, batch_size=batch_size)[0]


def check_classifier_fits(clf, pipe, conditional: bool) -> None:
    """The classifier must read the denoiser's images; for class accuracy it must also know the same classes."""
    data = pipe.cfg.data
    theirs, ours = (clf.in_channels, clf.image_size), (data.channels, data.image_size)
    if conditional:
        theirs, ours = (clf.num_classes, *theirs), (pipe.num_classes, *ours)
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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial share (Wilson 1927; z = 1.96: 95%). Unlike p ± z sqrt(p(1-p)/n) it
    stays inside [0, 1] and is not empty at p = 0 or 1, where a class accuracy near 100% sits."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"a share needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def loss_timesteps(T: int, count: int = 10) -> list[int]:
    """t = 1 and `count` evenly spaced steps up to T: the rows of the loss table."""
    return sorted({1, *(round(T * k / count) for k in range(1, count + 1))})


@torch.no_grad()
def loss_per_timestep(pipe, loader, timesteps: list[int]) -> list[float]:
    """The EMA network's mean loss over every item of `loader` at each t, with the noise the training run's
    validation draws for the same batch (`model.denoising.timestep_losses`)."""
    from data.captions import batch_parts
    from model.denoising import timestep_losses

    total, count = torch.zeros(len(timesteps), dtype=torch.float64), 0
    for batch_idx, batch in enumerate(loader):
        x, y, texts = batch_parts(batch)
        per_sample = timestep_losses(pipe.net, pipe.encode(x), pipe.condition(y, texts), timesteps,
                                     pipe.denoiser.objective, seed=10_000 + batch_idx)
        total += per_sample.double().sum(1).cpu()
        count += x.shape[0]
    if count == 0:
        raise UserError("the loss table needs held-out items, but the validation split is empty; "
                        "set data.val_fraction > 0")
    return (total / count).tolist()


PIXEL_SIZE_MAX = 32  # the pixel metric's side when the data has no native size (Inception covers larger images)


def pixel_size(dm) -> int:
    """The side the pixel metric compares images at: the data's native size (digits: 8), else at most 32."""
    return min(dm.native_size or PIXEL_SIZE_MAX, dm.image_size)


def real_pool(dm, max_items: int, seed: int) -> Tensor:
    """Up to max_items real images (N, C, H, W) in [-1, 1], training and validation alike, a seeded random subset."""
    from torch.utils.data import DataLoader, Subset

    items = dm.all_items()
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:max_items].sort().values
    loader = DataLoader(Subset(items, keep.tolist()), batch_size=256, num_workers=dm.cfg.num_workers)
    return torch.cat([x for x, *_ in loader])


@torch.no_grad()
def round_trip(pipe, images: Tensor, batch_size: int) -> Optional[Tensor]:
    """Images encoded (posterior mean) and decoded by the model's VAE, in [-1, 1]; None in pixel space."""
    if pipe.autoencoder is None:
        return None
    return torch.cat([pipe.decode(pipe.encode(x)).cpu() for x in images.split(batch_size)])


DOMAIN_FEATURES = ("the classifier's penultimate layer ({dim} values) of uint8 images at {size}x{size}, as they are "
                   "(no projection); a classifier keeps what tells the classes apart and may miss the rest")
INCEPTION_FEATURES = ("Inception-v3's {dim}-d pool features ({weights}) of uint8 images resized from {size} to "
                      "299x299{grey}, as they are (no projection); trained on photographs, not on this data")


@torch.no_grad()
def feature_vectors(extractor: nn.Module, images: Tensor, device: str, batch_size: int = 500,
                    rgb: bool = False) -> Tensor:
    """A feature network's vectors (N, D) float64 of [-1, 1] images, read from their uint8 quantisation as the pixel
    metrics read them; `rgb`: grey images repeated to three channels (Inception reads RGB)."""
    from model.metrics.fid import to_metric_input

    extractor = extractor.to(device)
    kind = "inception" if rgb else "classifier"
    return torch.cat([extractor(to_metric_input(x, kind).to(device)).double().cpu()
                      for x in images.split(batch_size)])


def classifier_vectors(clf, images: Tensor, device: str, batch_size: int = 500) -> Tensor:
    """The classifier's penultimate features (N, D) float64 of [-1, 1] images (`feature_vectors`)."""
    from model.metrics.fid import ClassifierFeatures

    return feature_vectors(ClassifierFeatures(clf), images, device, batch_size)


@dataclass(frozen=True)
class InceptionSpace:
    """Inception-v3 features for the error budget: the network (`model.metrics.fid.inception_extractor`), the weights
    file it loaded (None: torch-fidelity's in the hub cache) and its pool size."""

    extractor: nn.Module
    weights: Optional[str] = None
    features: int = 2048

    def describe(self, image_shape: tuple[int, ...]) -> str:
        from model.metrics.fid import INCEPTION_FILE

        c, h, w = image_shape
        weights = self.weights or f"torch-fidelity's {INCEPTION_FILE}"
        return INCEPTION_FEATURES.format(dim=self.features, weights=weights, size=f"{h}x{w}",
                                         grey=", grey repeated to RGB" if c == 1 else "")

    def vectors(self, images: Tensor, device: str) -> Tensor:
        return feature_vectors(self.extractor, images, device, batch_size=100, rgb=True)  # 299x299: small batches


def real_budgets(dm, samples: dict[str, Tensor], protocols: list, pool_size: int, autoencode=None,
                 n: Optional[int] = None, flag: str = "--num_samples", classifier=None,
                 inception: Optional[InceptionSpace] = None, device: str = "cpu") -> dict[str, dict]:
    """The error budgets (model.metrics.budget) of sample sets, possibly none, against the data's real images:
    one on pixel features per protocol ("pixels 16", "pixels 32", ...), with a classifier one on its penultimate
    features ("domain"), and with `inception` one on Inception-v3's features ("inception"). Every budget draws its
    floors from the same real pool (the first protocol's seed). `autoencode` maps images to their VAE round trip
    (None: no round-trip row); n defaults to the samples' count, and `flag` is the option a too large n is fixed
    with."""
    from model.metrics.budget import DOMAIN, INCEPTION, PIXELS, check_sizes, error_budget
    from model.metrics.pixel import pixel_vectors

    pool = real_pool(dm, pool_size, protocols[0].seed)
    n = n if n is not None else len(next(iter(samples.values())))
    check_sizes(len(pool), n, flag=flag)
    trip = autoencode(pool) if autoencode is not None else None
    spaces = [(f"pixels {p.size}", PIXELS, p, lambda x, s=p.size: pixel_vectors(x, s), None) for p in protocols]
    if classifier is not None:
        described = DOMAIN_FEATURES.format(dim=classifier.feature_dim, size=classifier.image_size)
        spaces.append((DOMAIN, DOMAIN, protocols[0], lambda x: classifier_vectors(classifier, x, device), described))
    if inception is not None:
        spaces.append((INCEPTION, INCEPTION, protocols[0], lambda x: inception.vectors(x, device),
                       inception.describe(tuple(pool.shape[1:]))))
    return {name: error_budget(vectors(pool), {k: vectors(x) for k, x in samples.items()}, protocol,
                               vectors(trip) if trip is not None else None, n=n, features=described, space=space)
            for name, space, protocol, vectors, described in spaces}


def real_budget(dm, samples: dict[str, Tensor], protocol, pool_size: int, autoencode=None,
                n: Optional[int] = None, flag: str = "--num_samples") -> dict:
    """`real_budgets` on the pixel features of one protocol."""
    return real_budgets(dm, samples, [protocol], pool_size, autoencode, n, flag)[f"pixels {protocol.size}"]


def model_budgets(pipe, dm, samples: dict[str, Tensor], protocols: list, pool_size: int, batch_size: int,
                  classifier=None, inception: Optional[InceptionSpace] = None, device: str = "cpu") -> dict[str, dict]:
    """`real_budgets` of a model's samples, with the round trip through the model's VAE (latent models)."""
    autoencode = None if pipe.autoencoder is None else (lambda x: round_trip(pipe, x, batch_size))
    return real_budgets(dm, samples, protocols, pool_size, autoencode, classifier=classifier, inception=inception,
                        device=device)


def pixel_budget(pipe, dm, samples: dict[str, Tensor], protocol, pool_size: int, batch_size: int) -> dict:
    """`model_budgets` on the pixel features of one protocol."""
    return model_budgets(pipe, dm, samples, [protocol], pool_size, batch_size)[f"pixels {protocol.size}"]
