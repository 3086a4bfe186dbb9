"""FID through torchmetrics: the closed form, both extractors (offline), and the cache of real statistics."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch

from data import DataConfig
from model.compat import fid_real_states
from model.metrics import fid as fidlib
from model.classifier import SmallCNN
from model.errors import UserError


def digits_like(n: int, seed: int) -> torch.Tensor:
    """n random blob images (n, 1, 16, 16) in [-1, 1]: smooth enough that a shift changes their statistics."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 20, 20, generator=g), 5, stride=1)  # (n, 1, 16, 16)
    return (x - x.mean()) / x.std() * 0.5


def frechet_closed_form(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) from two feature matrices (N, D), by scipy."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def fid_of(real: torch.Tensor, fake: torch.Tensor, extractor: str, **make) -> float:
    """FID of two image sets with a fresh metric (reset keeps the real side, so a reused one would add to it)."""
    metric = fidlib.make_fid(extractor, **make)
    fidlib.update(metric, [real], real=True, extractor=extractor)
    fidlib.update(metric, [fake], real=False, extractor=extractor)
    return float(metric.compute())


@pytest.fixture(scope="module")
def classifier() -> SmallCNN:
    """A random SmallCNN whose BatchNorm statistics are calibrated on blob images: its features vary between
    images by as much as their mean (an uncalibrated random net's barely do, and FID would be ~1e-5)."""
    torch.manual_seed(0)
    clf = SmallCNN(1, 10, 16, width=8)
    for m in clf.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one pass sets the statistics of that pass
    with torch.no_grad():
        clf.train()(digits_like(64, seed=10))
    return clf.eval()


def test_domain_fid_is_zero_on_itself_larger_when_shifted_and_matches_the_closed_form(classifier):
    real = digits_like(64, seed=0)
    shifted = torch.roll(real, shifts=3, dims=-1) * 0.8 + 0.1
    same = fid_of(real, real, "classifier", classifier=classifier)
    other = fid_of(real, shifted, "classifier", classifier=classifier)
    assert abs(same) < 1e-3 * other and other > 0.01  # sqrtm of a product: ~sqrt(machine eps) from exactly 0
    with torch.no_grad():
        feats = [classifier.features(fidlib.images_to_uint8(x).float() / 127.5 - 1).double().numpy()
                 for x in (real, shifted)]
    assert other == pytest.approx(frechet_closed_form(*feats), rel=1e-6)


def test_real_statistics_survive_reset(classifier):
    """One real pass serves every guidance scale: reset drops only the generated side."""
    metric = fidlib.make_fid("classifier", classifier)
    real, fake = digits_like(32, seed=1), digits_like(32, seed=2)
    fidlib.update(metric, [real], real=True, extractor="classifier")
    fidlib.update(metric, [fake], real=False, extractor="classifier")
    first = float(metric.compute())
    metric.reset()
    assert int(metric.real_features_num_samples) == 32 and int(metric.fake_features_num_samples) == 0
    fidlib.update(metric, [fake], real=False, extractor="classifier")
    assert float(metric.compute()) == first


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> str:
    """torch-fidelity's Inception-v3 with random weights made here (the real ones cannot be downloaded offline)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {}):
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_inception_path_runs_offline_through_torchmetrics(inception_weights):
    """The standard extractor from a local file: 64-d features (the first pool; random deeper features collapse)."""
    real = digits_like(16, seed=3)
    weights = {"inception_weights": inception_weights, "inception_features": 64}
    same = fid_of(real, real, "inception", **weights)
    other = fid_of(real, torch.roll(real, shifts=4, dims=-1) * 0.5 - 0.3, "inception", **weights)
    assert abs(same) < 1e-3 * other and other > 0
    assert fidlib.to_metric_input(real, "inception").shape == (16, 3, 16, 16)  # grey repeated to RGB


def test_missing_inception_weights_name_the_file_to_place(tmp_path, monkeypatch):
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        fidlib.make_fid("inception")
    msg = str(err.value)
    assert fidlib.INCEPTION_FILE in msg and str(tmp_path) in msg and "--inception-weights" in msg
    assert "\n" not in msg


def test_weights_files_that_are_not_inception_are_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not torch-fidelity's Inception-v3"):
        fidlib.make_fid("inception", inception_weights=str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="--inception-features"):
        fidlib.make_fid("inception", inception_features=100)


def test_cached_statistics_round_trip_and_their_key(classifier, tmp_path):
    metric = fidlib.make_fid("classifier", classifier)
    fidlib.update(metric, [digits_like(20, seed=4)], real=True, extractor="classifier")
    path = fidlib.stats_file(tmp_path, DataConfig(name="digits", image_size=16), "val", "classifier-abc")
    fidlib.save_real_stats(metric, path, {"images": 20})
    fresh = fidlib.make_fid("classifier", classifier)
    assert fidlib.load_real_stats(fresh, path)
    for name, value in fid_real_states(metric).items():
        assert torch.equal(fid_real_states(fresh)[name], value)
    assert not fidlib.load_real_stats(fresh, tmp_path / "absent.pt")
    # the key follows the images (size, split, extractor, data settings), not the loader's batch size
    def key(**settings):
        return fidlib.stats_file(tmp_path, DataConfig(**{"name": "digits", "image_size": 16, **settings}), "val",
                                 "classifier-abc")

    assert key(batch_size=7) == path
    assert key(image_size=32) != path and key(seed=1) != path
    assert fidlib.stats_file(tmp_path, DataConfig(name="digits", image_size=16), "val", "inception2048-x") != path
