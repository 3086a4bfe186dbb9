"""The error budget: generated samples, the VAE round trip of real images and real images themselves, each scored
against the same real reference by the same metrics.

- **floor**: n real images that are not in the reference. A perfect generator scores about this, not 0 (a finite
  sample is never its distribution); every figure means something only beside it, at the same n.
- **VAE round trip**: those same real images encoded and decoded by the run's autoencoder: the best that stage 2
  can reach, since every sample passes through the same decoder. Far above the floor: stage 1 is the bottleneck.
- **samples**: n generated images per row.

Every draw splits the real pool at random into n floor images and a reference of the rest, fits the pixel
projection on that reference alone and scores every row against it; figures are the mean (and std) over draws.
That averages out the floor's own draw-to-draw noise, which is large at a few hundred images.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from model.errors import UserError
from model.metrics.pixel import PCAProjection
from model.metrics.precision_recall import precision_recall_coverage

FLOOR, ROUND_TRIP = "real floor", "VAE round trip"
# the feature spaces: projected pixels, a classifier's penultimate layer, Inception-v3's pool features
PIXELS, DOMAIN, INCEPTION = "pixels", "domain", "inception"
LABELS = {PIXELS: "pixel", DOMAIN: "domain", INCEPTION: "Inception"}  # the word tables put before FD
METRICS = ("pixel_fd", "kid", "precision", "recall", "coverage")
KID_SUBSET_MAX = 1000  # torchmetrics' default subset size; smaller sets use their own size


@dataclass(frozen=True)
class PixelProtocol:
    """Everything that must match for two pixel-metric figures to be comparable."""

    size: int  # images are area-downsampled to size x size (the data's native resolution for digits: 8)
    components: int = 16  # leading principal components of the reference; 16 keep ~75% of the digits' variance
    k: int = 3  # nearest neighbour that sets a ball's radius for precision/recall (Kynkäänniemi et al. use 3)
    draws: int = 10  # random floor/reference splits averaged; one draw of 500 digits varies by about ±20%
    kid_subsets: int = 100  # torchmetrics' default
    seed: int = 0

    def describe(self, pool: int, n: int, features: Optional[str] = None, space: str = DOMAIN) -> dict[str, Any]:
        """The protocol as a dict; `features` describes vectors that are features already, of `space` (DOMAIN or
        INCEPTION)."""
        pixels = (f"uint8 images area-downsampled to {self.size}x{self.size}, intensities in [0, 1], "
                  f"projected on the reference's {self.components} leading principal components")
        return {**asdict(self), "real_pool": pool, "n": n, "reference": pool - n,
                "space": PIXELS if features is None else space, "features": features or pixels,
                "metrics": "Fréchet distance and KID (torchmetrics, custom feature extractor), improved precision "
                           f"and recall (k = {self.k}), coverage (k = {self.k})"}


class AsFeatures(nn.Module):
    """The identity on vectors that are features already (a classifier's penultimate layer), (B, D) float64."""

    def __init__(self, reference: Tensor) -> None:
        super().__init__()
        self.num_features = reference.shape[1]  # torchmetrics reads this instead of probing with a dummy image

    def forward(self, x: Tensor) -> Tensor:
        return x.double()


def score(reference: Tensor, query: Tensor, projection: PCAProjection, protocol: PixelProtocol) -> dict[str, float]:
    """Fréchet distance, KID, precision, recall and coverage of `query` against `reference` (pixel vectors, (N, D))."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fd = FrechetInceptionDistance(feature=projection)
    fd.update(reference, real=True)
    fd.update(query, real=False)
    subset = min(len(reference), len(query), KID_SUBSET_MAX)
    with warnings.catch_warnings():  # torchmetrics warns that KID keeps every feature: a few KB here
        warnings.simplefilter("ignore")
        kid = KernelInceptionDistance(feature=projection, subsets=protocol.kid_subsets, subset_size=subset)
    kid.update(reference, real=True)
    kid.update(query, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global generator
        torch.manual_seed(protocol.seed)
        kid_mean = float(kid.compute()[0])
    precision, recall, coverage = precision_recall_coverage(projection(reference), projection(query), protocol.k)
    return {"pixel_fd": float(fd.compute()), "kid": kid_mean, "precision": precision, "recall": recall,
            "coverage": coverage}


def _summary(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    stacked = {m: torch.tensor([v[m] for v in values], dtype=torch.float64) for m in METRICS}
    return {m: {"mean": float(s.mean()), "std": float(s.std()) if len(s) > 1 else 0.0} for m, s in stacked.items()}


def check_sizes(pool: int, n: int, per: int = 1, flag: str = "--num_samples") -> None:
    """n samples per row need 2n real images: n for the floor, at least as many for the reference. The fix names
    `flag`, whose value is multiplied by `per` to give n (demo_report: --per-class times the classes)."""
    if n < 2:
        raise UserError(f"the pixel metrics need at least 2 samples per row, got {n}; raise {flag}")
    if pool < 2 * n:
        raise UserError(f"the pixel metrics need at least 2n = {2 * n} real images (n for the floor, the rest as the "
                        f"reference) but the data has {pool}; use {flag} {pool // 2 // per} or fewer")


def error_budget(pool: Tensor, rows: dict[str, Tensor], protocol: PixelProtocol,
                 round_trip: Optional[Tensor] = None, n: Optional[int] = None,
                 features: Optional[str] = None, space: str = DOMAIN) -> dict[str, Any]:
    """Score every row of samples, the VAE round trip and the real floor against the same references.

    pool (P, D): pixel vectors of real images (`pixel_vectors`); rows: name → (n, D) sample vectors, all of one n;
    round_trip (P, D): the pool's images through the autoencoder (None for pixel-space models). `features`
    describes vectors that are features already (a classifier's penultimate layer: `space` DOMAIN; Inception's pool
    features: INCEPTION): they are scored as they are instead of on the reference's principal components. Returns
    {"protocol", "rows": [{"row": name, metric: {"mean", "std"}, ...}]} with the samples first, the floor last.
    """
    sizes = {len(v) for v in rows.values()} | ({n} if n is not None else set())
    if len(sizes) != 1:
        raise UserError(f"every row of the error budget needs the same number of images, got {sorted(sizes)}")
    n = sizes.pop()
    check_sizes(len(pool), n)
    names = [*rows, *([ROUND_TRIP] if round_trip is not None else []), FLOOR]
    per_draw: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    gen = torch.Generator().manual_seed(protocol.seed)
    for _ in range(protocol.draws):
        perm = torch.randperm(len(pool), generator=gen)
        floor_idx, ref_idx = perm[:n], perm[n:]
        reference = pool[ref_idx]
        projection = (PCAProjection.fit(reference, protocol.components) if features is None
                      else AsFeatures(reference))
        queries = {**rows, FLOOR: pool[floor_idx]}
        if round_trip is not None:
            queries[ROUND_TRIP] = round_trip[floor_idx]
        for name in names:
            per_draw[name].append(score(reference, queries[name], projection, protocol))
    return {"protocol": protocol.describe(len(pool), n, features, space),
            "rows": [{"row": name, **_summary(per_draw[name])} for name in names]}


def floor_ratio(budget: dict[str, Any], row: str, metric: str = "pixel_fd") -> float:
    """A row's mean over the floor's mean for one metric (1 = as good as real images)."""
    means = {r["row"]: r[metric]["mean"] for r in budget["rows"]}
    return means[row] / means[FLOOR]


def _cell(stats: Optional[dict[str, float]], scale: float, digits: int) -> str:
    if stats is None:  # a budget written before the metric was scored
        return "n/a"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def table_rows(budget: dict[str, Any]) -> list[list[str]]:
    """[row, FD (× floor), KID × 10³, precision, recall, coverage] as text, one list per row."""
    out = []
    for r in budget["rows"]:
        ratio = floor_ratio(budget, r["row"])
        out.append([r["row"], f"{_cell(r['pixel_fd'], 1, 4)} ({ratio:.2f}× floor)", _cell(r["kid"], 1e3, 2),
                    _cell(r["precision"], 1, 3), _cell(r["recall"], 1, 3), _cell(r.get("coverage"), 1, 3)])
    return out


def space(budget: dict[str, Any]) -> str:
    """PIXELS, DOMAIN or INCEPTION (budgets written before there were several spaces are pixel budgets)."""
    return budget["protocol"].get("space", PIXELS)


def label(budget: dict[str, Any]) -> str:
    """"pixel", "domain" or "Inception": the word the tables put before FD and metrics."""
    return LABELS[space(budget)]


def header(budget: dict[str, Any]) -> list[str]:
    return ["", f"{label(budget)} FD", "KID × 10³", "precision", "recall", "coverage"]


def as_text(budget: dict[str, Any]) -> str:
    """The error budget as an aligned plain-text table with its protocol line."""
    rows = [header(budget), *table_rows(budget)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    p = budget["protocol"]
    lines.append(f"{label(budget)} metrics: {p['features']}; mean ± std over {p['draws']} draws of n = {p['n']} "
                 f"floor images and a reference of {p['reference']}; precision/recall/coverage k = {p['k']}")
    return "\n".join(lines)


def as_markdown(budget: dict[str, Any]) -> str:
    """The error budget as a Markdown table with its protocol."""
    p, head = budget["protocol"], header(budget)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(budget)]
    lines += ["", f"{label(budget).capitalize()} metrics: {p['features']}. Mean ± std over {p['draws']} random "
                  f"splits of {p['real_pool']} "
                  f"real images into n = {p['n']} floor images and a reference of {p['reference']}; every row is "
                  f"scored against the same references. Precision, recall and coverage: k = {p['k']}."]
    return "\n".join(lines)
