"""The pixel metrics against closed forms: Fréchet distance through torchmetrics, KID, improved precision/recall,
the PCA projection, the area downsampling, and the error budget's floor on real digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from model.errors import UserError
from model.metrics.budget import FLOOR, ROUND_TRIP, PixelProtocol, as_markdown, as_text, error_budget, floor_ratio, score
from model.metrics.pixel import PCAProjection, pixel_vectors
from model.metrics.precision_recall import knn_radii, precision_recall, precision_recall_coverage, real_coverage


def identity(d: int) -> PCAProjection:
    """A projection that leaves d-dim vectors as they are: the metrics then see the raw points."""
    return PCAProjection(torch.zeros(d), torch.eye(d), explained=1.0)


def gaussian_with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n points whose *sample* mean and (n-1)-normalised covariance are exactly `mean` and `cov`."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # sample covariance I
    return mean.double() + z @ torch.linalg.cholesky(cov.double()).T


def closed_form_fd(m1, c1, m2, c2) -> float:
    """||m1 - m2||^2 + tr(c1 + c2 - 2 (c1 c2)^(1/2)) (Dowson & Landau 1982), by scipy."""
    root = linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    return float((m1 - m2).square().sum() + np.trace(c1.numpy() + c2.numpy() - 2 * root))


PROTOCOL = PixelProtocol(size=8, components=3, draws=1, kid_subsets=10)


# ----- Fréchet distance and KID (torchmetrics with our feature extractor) ----------------------------------------
def test_identical_sets_have_zero_frechet_distance_and_kid_near_zero():
    x = gaussian_with_moments(200, torch.zeros(3), torch.eye(3), seed=0)
    far = score(x, x + 3.0, identity(3), PROTOCOL)
    same = score(x, x.clone(), identity(3), PROTOCOL)
    assert same["pixel_fd"] == pytest.approx(0.0, abs=1e-9)
    assert abs(same["kid"]) < 1e-2 * far["kid"]  # the unbiased MMD estimate of a set against itself is ~0
    assert far["pixel_fd"] == pytest.approx(27.0, rel=1e-9)  # a shift by 3 in each of 3 dims, same covariance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_of_gaussians_is_the_closed_form(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g, dtype=torch.float64)
    c1, c2 = a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(4, dtype=torch.float64)
    m1, m2 = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    real, fake = gaussian_with_moments(300, m1, c1, seed), gaussian_with_moments(250, m2, c2, seed + 10)
    fd = score(real, fake, identity(4), PROTOCOL)["pixel_fd"]
    assert fd == pytest.approx(closed_form_fd(m1, c1, m2, c2), rel=1e-6)


def test_kid_grows_with_the_distance_between_sets():
    x = gaussian_with_moments(200, torch.zeros(3), torch.eye(3), seed=0)
    y = gaussian_with_moments(200, torch.zeros(3), torch.eye(3), seed=1)
    kids = [score(x, y + shift, identity(3), PROTOCOL)["kid"] for shift in (0.0, 0.5, 1.0, 2.0)]
    assert kids == sorted(kids) and kids[-1] > 20 * abs(kids[0])


def test_kid_is_reproducible_whatever_the_global_random_state():
    x = gaussian_with_moments(300, torch.zeros(3), torch.eye(3), seed=0)
    y = gaussian_with_moments(100, torch.ones(3), torch.eye(3), seed=1)
    torch.manual_seed(1)
    first = score(x, y, identity(3), PROTOCOL)["kid"]
    torch.manual_seed(2)
    assert score(x, y, identity(3), PROTOCOL)["kid"] == first


# ----- precision and recall --------------------------------------------------------------------------------------
def test_knn_radii_by_hand():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 5.0]


def test_a_set_against_itself_has_precision_and_recall_one():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_a_far_away_disjoint_set_has_precision_and_recall_zero():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


def test_half_realistic_samples_have_precision_one_half():
    real = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    fake = torch.cat([real[:100], real[:100] + 100.0])  # half copies, half far off the real manifold
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == 0.5
    assert recall == precision_recall(real, real[:100], k=3)[1]  # the far half covers no real point


def test_lost_variety_lowers_recall_not_precision():
    real = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    collapsed = real[:20].repeat(10, 1) + 1e-3 * torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    precision, recall = precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.2


def test_coverage_is_one_for_a_set_against_itself_and_zero_far_away():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    assert real_coverage(x, x.clone(), k=3) == 1.0 and real_coverage(x, x + 100.0, k=3) == 0.0


def test_coverage_uses_the_real_radii_so_noise_inflates_recall_not_coverage():
    """Samples spread twice as wide as the data reach every real point with their own wide balls (recall 1) yet sit
    in almost no real point's ball; samples from the data's own law keep coverage near 1."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 16, generator=g)
    noisy, faithful = 2.0 * torch.randn(500, 16, generator=g), torch.randn(500, 16, generator=g)
    assert precision_recall(real, noisy, k=3)[1] == 1.0 and real_coverage(real, noisy, k=3) < 0.05
    assert real_coverage(real, faithful, k=3) > 0.85


def test_the_three_shares_by_hand_on_a_line():
    """k = 1: every real point's ball has radius 1; the fakes' balls 4.5, 4.5 and 6.5."""
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    fake = torch.tensor([[0.5], [5.0], [11.5]])
    precision, recall, covered = precision_recall_coverage(real, fake, k=1)
    assert precision == pytest.approx(2 / 3)  # 0.5 and 11.5 sit in a real ball, 5 in none
    assert recall == 1.0  # the wide fake balls reach every real point
    assert covered == pytest.approx(4 / 6)  # 0, 1, 11 and 12 hold a fake within 1; 2 and 10 do not


def test_precision_recall_refuses_a_k_the_set_cannot_have():
    with pytest.raises(UserError, match="k"):
        knn_radii(torch.zeros(3, 2), 3)


# ----- pixel features ----------------------------------------------------------------------------------------------
def test_pixel_vectors_are_block_means_of_the_quantised_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    u = ((x + 1) * 127.5).round().double() / 255.0  # what the PNG holds, in [0, 1]
    expected = u.reshape(2, 1, 8, 2, 8, 2).mean(dim=(3, 5)).flatten(1)
    assert torch.allclose(pixel_vectors(x, 8), expected, atol=1e-12)
    assert torch.equal(pixel_vectors(x, 16), u.flatten(1))


def test_pca_axes_are_orthonormal_and_ordered_by_variance():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([5.0, 3.0, 1.0, 0.1, 0.01], dtype=torch.float64)
    x = torch.randn(1000, 5, generator=g, dtype=torch.float64) * scales + 7.0
    proj = PCAProjection.fit(x, 3)
    c = proj.components  # (5, 3)
    assert torch.allclose(c.T @ c, torch.eye(3, dtype=torch.float64), atol=1e-10)
    y = proj(x)
    assert torch.allclose(y.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    variances = y.var(0)
    assert variances.tolist() == sorted(variances.tolist(), reverse=True)
    assert torch.allclose(c.abs().argmax(0), torch.tensor([0, 1, 2]))  # the axes are the data's own
    assert proj.explained == pytest.approx(float((y.var(0).sum() / x.var(0).sum())), rel=1e-9)


def test_pca_of_data_on_a_subspace_explains_everything_and_keeps_distances():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 2, generator=g, dtype=torch.float64))[0]  # (10, 2)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64) @ basis.T
    proj = PCAProjection.fit(x, 2)
    assert proj.explained == pytest.approx(1.0, abs=1e-12)
    exact = dict(compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.allclose(torch.cdist(proj(x), proj(x), **exact), torch.cdist(x, x, **exact), atol=1e-10)


def test_pca_refuses_more_components_than_the_reference_supports():
    with pytest.raises(UserError, match="--pca-components"):
        PCAProjection.fit(torch.randn(10, 64), 16)


# ----- the error budget on real digits -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_pool():
    from data import make_datamodule
    from data.config import DataConfig
    from model.evaluation import real_pool

    dm = make_datamodule(DataConfig(name="digits", image_size=16, channels=1))
    dm.prepare_data()
    dm.setup("fit")
    images = real_pool(dm, 10_000, seed=0)
    assert images.shape == (1797, 1, 16, 16)
    return images


def budget_of(pool: torch.Tensor, rows: dict[str, torch.Tensor], trip=None) -> dict:
    protocol = PixelProtocol(size=8, draws=3)
    vec = {k: pixel_vectors(v, 8) for k, v in rows.items()}
    return error_budget(pixel_vectors(pool, 8), vec, protocol, pixel_vectors(trip, 8) if trip is not None else None)


def test_the_budget_sees_blur_lost_variety_and_a_faithful_round_trip(digits_pool):
    """Degraded real digits must score far from the floor, each on the metric that should see it."""
    g = torch.Generator().manual_seed(5)
    held = digits_pool[torch.randperm(len(digits_pool), generator=g)[:300]]
    blurred = F.avg_pool2d(F.pad(held, (2, 2, 2, 2), mode="replicate"), 5, stride=1)  # 5x5 box blur at 16 px
    collapsed = held[:30].repeat(10, 1, 1, 1)
    blocks = F.interpolate(torch.randn(len(held), 1, 8, 8, generator=g), scale_factor=2)  # noise the 8x8 metric sees
    noisy = (held + 0.5 * blocks).clamp(-1, 1)
    b = budget_of(digits_pool, {"blurred": blurred, "collapsed": collapsed, "noisy": noisy, "real": held},
                  trip=digits_pool)
    means = {r["row"]: {m: r[m]["mean"] for m in ("pixel_fd", "precision", "recall", "coverage")} for r in b["rows"]}
    assert [r["row"] for r in b["rows"]] == ["blurred", "collapsed", "noisy", "real", ROUND_TRIP, FLOOR]
    # noise spreads the samples' own balls over real digits (recall above the floor's); coverage, on real radii, falls
    assert means["noisy"]["recall"] > means[FLOOR]["recall"] and means["noisy"]["precision"] < 0.5
    assert means["noisy"]["coverage"] < 0.5 * means[FLOOR]["coverage"]
    assert means["collapsed"]["coverage"] < 0.5 * means[FLOOR]["coverage"]
    assert floor_ratio(b, "blurred") > 5 and means["blurred"]["recall"] < 0.5 * means[FLOOR]["recall"]
    assert floor_ratio(b, "collapsed") > 3 and means["collapsed"]["recall"] < 0.3
    assert means["collapsed"]["precision"] > 0.9 * means[FLOOR]["precision"]
    assert floor_ratio(b, ROUND_TRIP) == pytest.approx(1.0)  # a perfect autoencoder: its round trip is the floor
    assert 0.5 < floor_ratio(b, "real") < 1.5  # real digits (in part inside the references) score about the floor
    assert "pixel FD" in as_text(b) and "| real floor |" in as_markdown(b)


def test_the_budget_is_reproducible_and_states_its_protocol(digits_pool):
    fake = digits_pool[:100] * 0.9
    first, second = budget_of(digits_pool, {"s": fake}), budget_of(digits_pool, {"s": fake})
    assert first == second
    p = first["protocol"]
    assert (p["n"], p["reference"], p["real_pool"], p["components"], p["k"]) == (100, 1697, 1797, 16, 3)


def test_the_budget_needs_one_n_and_enough_real_images(digits_pool):
    vectors = pixel_vectors(digits_pool, 8)
    with pytest.raises(UserError, match="same number"):
        error_budget(vectors, {"a": vectors[:10], "b": vectors[:20]}, PROTOCOL)
    with pytest.raises(UserError, match="--num_samples 50 or fewer"):
        error_budget(vectors[:100], {"a": vectors[:60]}, PROTOCOL)


def test_a_domain_budget_scores_features_as_they_are_and_names_its_space(digits_pool):
    """Vectors that are features already are not projected: a set shifted along one feature moves the FD by the
    square of the shift (the closed form for equal covariances), and the tables say "domain FD"."""
    from model.metrics.budget import DOMAIN, PIXELS

    g = torch.Generator().manual_seed(1)
    pool = torch.randn(600, 5, generator=g, dtype=torch.float64)
    shifted = torch.randn(200, 5, generator=g, dtype=torch.float64) + torch.tensor([3.0, 0, 0, 0, 0])
    b = error_budget(pool, {"shifted": shifted}, PixelProtocol(size=8, draws=2), features="five numbers")
    fd = b["rows"][0]["pixel_fd"]["mean"]
    assert fd == pytest.approx(9.0, rel=0.15) and floor_ratio(b, "shifted") > 10
    assert b["protocol"]["space"] == DOMAIN and b["protocol"]["features"] == "five numbers"
    assert "domain FD" in as_text(b) and "Domain metrics: five numbers" in as_markdown(b)
    assert budget_of(digits_pool, {"s": digits_pool[:100]})["protocol"]["space"] == PIXELS


def test_real_budgets_score_one_pool_at_every_pixel_size_and_on_classifier_features():
    """Every space draws its floors from the same real images; the domain space reads the classifier's features."""
    from data import make_datamodule
    from data.config import DataConfig
    from model.classifier import SmallCNN
    from model.evaluation import classifier_vectors, real_budgets, real_pool

    dm = make_datamodule(DataConfig(name="digits", image_size=16, channels=1, max_items=300))
    dm.prepare_data()
    dm.setup("fit")
    clf = SmallCNN(1, 10, 16, width=4).eval()
    real = real_pool(dm, 10_000, seed=0)
    blurred = F.avg_pool2d(F.pad(real[:60], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    protocols = [PixelProtocol(size=8, draws=2), PixelProtocol(size=16, draws=2)]
    budgets = real_budgets(dm, {"blurred": blurred}, protocols, 10_000, classifier=clf)
    assert list(budgets) == ["pixels 8", "pixels 16", "domain"]
    assert [budgets[k]["protocol"]["size"] for k in ("pixels 8", "pixels 16")] == [8, 16]
    assert all(floor_ratio(b, "blurred") > 1 for b in budgets.values())
    direct = error_budget(classifier_vectors(clf, real, "cpu"), {"blurred": classifier_vectors(clf, blurred, "cpu")},
                          protocols[0], features=budgets["domain"]["protocol"]["features"])
    assert direct == budgets["domain"]
    assert classifier_vectors(clf, real[:5], "cpu").shape == (5, clf.feature_dim)


class StandInInception(torch.nn.Module):
    """Inception's interface without its weights: uint8 RGB images (B, 3, H, W) → (B, 6) features (each channel's
    mean and spread); refuses anything else, as torch-fidelity's network does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3, (x.dtype, x.shape)
        x = x.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_an_inception_budget_reads_rgb_uint8_and_names_its_space_and_weights():
    """The Inception space scores the network's features as they are, grey images repeated to RGB, and the tables
    say "Inception FD" with the weights file in the protocol."""
    from data import make_datamodule
    from data.config import DataConfig
    from model.evaluation import InceptionSpace, feature_vectors, real_budgets, real_pool
    from model.metrics.budget import INCEPTION

    dm = make_datamodule(DataConfig(name="digits", image_size=16, channels=1, max_items=300))
    dm.prepare_data()
    dm.setup("fit")
    real = real_pool(dm, 10_000, seed=0)
    darker = (real[:60] - 0.5).clamp(-1, 1)  # every channel's mean moves: the stand-in's features see it
    space = InceptionSpace(StandInInception(), weights="my-inception.pth")
    budgets = real_budgets(dm, {"darker": darker}, [PixelProtocol(size=8, draws=2)], 10_000, inception=space)
    assert list(budgets) == ["pixels 8", INCEPTION]
    b = budgets[INCEPTION]
    assert b["protocol"]["space"] == INCEPTION and "my-inception.pth" in b["protocol"]["features"]
    assert "grey repeated to RGB" in b["protocol"]["features"] and "from 16x16 to 299x299" in b["protocol"]["features"]
    assert floor_ratio(b, "darker") > 10
    assert "Inception FD" in as_text(b) and "Inception metrics: Inception-v3's 2048-d" in as_markdown(b)
    vectors = feature_vectors(StandInInception(), real[:4], "cpu", rgb=True)
    assert vectors.dtype == torch.float64 and vectors.shape == (4, 6)
    assert torch.equal(vectors[:, 0], vectors[:, 1])  # one grey channel, repeated
