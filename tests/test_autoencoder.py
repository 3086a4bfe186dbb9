"""Tests of model.autoencoder: VAE shapes and sampling, KL closed form, beta schedule, reconstruction losses."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal
from torchmetrics.functional.image import structural_similarity_index_measure

from model.autoencoder import (
    BACKBONE_FILES,
    BetaVAE,
    LossConfig,
    ReconstructionLoss,
    VAEConfig,
    beta_at,
    build_lpips,
    kl_divergence,
    l1_loss,
    mse_loss,
    rgb_to_ycbcr,
    ssim_loss,
    ycbcr_loss,
)
from model.autoencoder.networks import LOGVAR_MAX, LOGVAR_MIN
from model.errors import UserError

# sheet 001's FFHQ autoencoder: 128x128 RGB, f = 8, 8 latent channels (narrow here to stay fast)
FFHQ = dict(in_channels=3, base_channels=16, channel_mult=[1, 2, 2, 4], latent_channels=8)


def images(b: int, c: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w or h, generator=g) * 2 - 1  # (B, C, H, W) in [-1, 1]


def smooth_images(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency images (upsampled noise), so SSIM and LPIPS see structure rather than white noise."""
    coarse = images(b, c, size // 4, seed=seed)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)




# ----- config ---------------------------------------------------------------------------------------------------
def test_downsample_factor_and_latent_shape():
    assert VAEConfig().downsample_factor == 4
    ffhq = VAEConfig(**FFHQ)
    assert ffhq.downsample_factor == 8
    assert ffhq.latent_shape(128, 128) == (8, 16, 16)
    with pytest.raises(UserError, match="divisible"):
        ffhq.latent_shape(100, 128)


def test_config_roundtrips_through_asdict():
    cfg = VAEConfig(**FFHQ)
    assert VAEConfig(**dataclasses.asdict(cfg)) == cfg
    loss = LossConfig(l1=0.5, ssim=0.2, lpips_weights="w.pth")
    assert LossConfig(**dataclasses.asdict(loss)) == loss


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(in_channels=0), "vae.net.in_channels"),
        (dict(base_channels=-1), "vae.net.base_channels"),
        (dict(channel_mult=[]), "vae.net.channel_mult"),
        (dict(channel_mult=[1, 0]), "vae.net.channel_mult"),
        (dict(num_res_blocks=0), "vae.net.num_res_blocks"),
        (dict(latent_channels=0), "vae.net.latent_channels"),
        (dict(norm_groups=0), "vae.net.norm_groups"),
        (dict(base_channels=12, norm_groups=8), "vae.net.norm_groups"),
        (dict(beta_start=-1.0), "vae.net.beta_start"),
        (dict(kl_factor=0.0), "vae.net.kl_factor"),
        (dict(kl_factor=1.5), "vae.net.kl_factor"),
        (dict(beta_decay_period=0), "vae.net.beta_decay_period"),
        (dict(beta_min=-1e-4), "vae.net.beta_min"),
        (dict(beta_start=1e-3, beta_min=1e-2), "vae.net.beta_min"),
    ],
)
def test_bad_vae_config_raises_user_error(kwargs, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as info:
        VAEConfig(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(l1=-1.0), "vae.loss.l1"),
        (dict(mse=-0.1), "vae.loss.mse"),
        (dict(ssim=-0.1), "vae.loss.ssim"),
        (dict(ycbcr=-0.1), "vae.loss.ycbcr"),
        (dict(lpips=-0.1), "vae.loss.lpips"),
        (dict(l1=0.0), "vae.loss"),
        (dict(lpips_net="resnet"), "vae.loss.lpips_net"),
        (dict(lpips_weights=""), "vae.loss.lpips_weights"),
    ],
)
def test_bad_loss_config_raises_user_error(kwargs, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as info:
        LossConfig(**kwargs)
    assert "\n" not in str(info.value)


# ----- networks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, size, latent",
    [
        (dict(), (32, 32), (4, 8, 8)),
        (dict(in_channels=3, channel_mult=[1, 2]), (32, 32), (4, 16, 16)),
        (dict(in_channels=3, base_channels=16, num_res_blocks=2, latent_channels=2), (32, 48), (2, 8, 12)),
        (FFHQ, (128, 128), (8, 16, 16)),
    ],
)
def test_vae_shapes(kwargs, size, latent):
    cfg = VAEConfig(**kwargs)
    vae = BetaVAE(cfg)
    x = images(2, cfg.in_channels, *size)
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        assert mean.shape == logvar.shape == (2, *latent)
        x_hat, mean, logvar, z = vae(x)
        assert vae.decode(z).shape == x.shape
    assert x_hat.shape == x.shape
    assert mean.shape == logvar.shape == z.shape == (2, *latent)


def test_vae_rejects_sizes_not_divisible_by_f_and_wrong_channels():
    vae = BetaVAE(VAEConfig())
    with pytest.raises(UserError, match="divisible by the VAE downsampling factor 4"):
        vae(images(1, 1, 30))
    with pytest.raises(UserError, match="vae.net.in_channels"):
        vae(images(1, 3, 32))


def test_eval_uses_the_mean_and_train_samples():
    torch.manual_seed(0)
    vae = BetaVAE(VAEConfig(base_channels=16))
    x = images(3, 1, 32)
    vae.eval()
    with torch.no_grad():
        a, mean, _, z = vae(x)
        b, *_ = vae(x)
    assert torch.equal(z, mean)
    assert torch.equal(a, b)  # deterministic
    assert torch.allclose(a, vae.decode(mean))
    vae.train()
    with torch.no_grad():
        a, mean, _, z = vae(x)
        b, _, _, z2 = vae(x)
    assert not torch.allclose(z, mean)
    assert not torch.allclose(z, z2)
    # explicit override either way
    with torch.no_grad():
        assert torch.equal(vae(x, sample=False)[3], vae(x, sample=False)[1])
        vae.eval()
        out = vae(x, sample=True)
        assert not torch.allclose(out[3], out[1])


def test_generator_makes_samples_reproducible():
    vae = BetaVAE(VAEConfig(base_channels=16)).train()
    x = images(2, 1, 32)
    with torch.no_grad():
        z1 = vae(x, generator=torch.Generator().manual_seed(3))[3]
        z2 = vae(x, generator=torch.Generator().manual_seed(3))[3]
    assert torch.equal(z1, z2)


def test_reparameterisation_statistics_and_gradients():
    n = 200_000
    mean = torch.full((n, 1, 1, 1), 1.5, requires_grad=True)
    logvar = torch.full((n, 1, 1, 1), math.log(0.25), requires_grad=True)  # sigma = 0.5
    z = BetaVAE.reparameterise(mean, logvar, generator=torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(1.5, abs=0.01)
    assert z.std().item() == pytest.approx(0.5, abs=0.01)
    z.sum().backward()  # dz/dmean = 1, dz/dlogvar = 0.5 * sigma * eps
    assert torch.allclose(mean.grad, torch.ones_like(mean))
    eps = (z.detach() - 1.5) / 0.5
    assert torch.allclose(logvar.grad, 0.25 * eps, atol=1e-5)


def test_logvar_is_clamped():
    vae = BetaVAE(VAEConfig(base_channels=16))
    conv = vae.encoder.out[-1]
    c_z = vae.cfg.latent_channels
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias[c_z:] = 1e4  # absurd log-variance
    _, logvar = vae.encode(images(1, 1, 32))
    assert torch.all(logvar == LOGVAR_MAX)
    with torch.no_grad():
        conv.bias[c_z:] = -1e4
    _, logvar = vae.encode(images(1, 1, 32))
    assert torch.all(logvar == LOGVAR_MIN)
    assert torch.isfinite(kl_divergence(*vae.encode(images(1, 1, 32)))).all()


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    vae = BetaVAE(VAEConfig(base_channels=8, channel_mult=[1, 2], norm_groups=4))
    loss_fn = ReconstructionLoss(LossConfig(l1=1.0, mse=1.0))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    x = smooth_images(2, 1, 8)
    losses = []
    for step in range(20):
        x_hat, mean, logvar, _ = vae(x)
        recon, _ = loss_fn(x_hat, x)
        loss = (recon + beta_at(step, 1e-3, 0.5, 10, 1e-5) * kl_divergence(mean, logvar)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ----- KL and beta ----------------------------------------------------------------------------------------------
def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 5, 5, generator=g)
    logvar = torch.randn(3, 4, 5, 5, generator=g)
    reference = torch.distributions.kl_divergence(
        Normal(mean, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mean), torch.ones_like(mean))
    ).flatten(1)  # (B, d)
    assert torch.allclose(kl_divergence(mean, logvar, reduction="sum"), reference.sum(1), rtol=1e-5)
    assert torch.allclose(kl_divergence(mean, logvar), reference.mean(1), rtol=1e-5)
    assert kl_divergence(mean, logvar).shape == (3,)


def test_kl_zero_at_prior_positive_elsewhere():
    zeros = torch.zeros(2, 4, 3, 3)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(2))
    assert torch.all(kl_divergence(zeros + 0.1, zeros) > 0)
    assert torch.all(kl_divergence(zeros, zeros - 0.5) > 0)
    # closed form of one element: mean 1, logvar 0 -> 1/2
    assert kl_divergence(torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        kl_divergence(zeros, zeros, reduction="none")  # type: ignore[arg-type]


def test_beta_schedule():
    kw = dict(beta_start=2.0, kl_factor=0.5, beta_decay_period=100, beta_min=1e-3)
    assert beta_at(0, **kw) == 2.0
    assert beta_at(100, **kw) == pytest.approx(1.0)
    assert beta_at(200, **kw) == pytest.approx(0.5)
    assert beta_at(50, **kw) == pytest.approx(2.0 * math.sqrt(0.5))  # continuous, not a staircase
    assert beta_at(100_000, **kw) == 1e-3  # floor
    assert beta_at(10**12, **kw) == 1e-3  # no overflow
    betas = [beta_at(s, **kw) for s in range(0, 2000, 7)]
    assert all(a >= b for a, b in zip(betas, betas[1:]))
    assert beta_at(500, beta_start=0.3, kl_factor=1.0, beta_decay_period=10, beta_min=0.0) == 0.3
    with pytest.raises(ValueError):
        beta_at(-1, **kw)


def test_beta_schedule_from_config_defaults():
    cfg = VAEConfig()
    args = (cfg.beta_start, cfg.kl_factor, cfg.beta_decay_period, cfg.beta_min)
    assert beta_at(0, *args) == 1.0
    assert beta_at(1000, *args) == pytest.approx(0.5)
    floor_step = math.ceil(math.log(cfg.beta_min) / math.log(cfg.kl_factor) * cfg.beta_decay_period)
    assert beta_at(floor_step, *args) == cfg.beta_min
    assert beta_at(floor_step - 100, *args) > cfg.beta_min


# ----- reconstruction losses ------------------------------------------------------------------------------------
def test_rgb_to_ycbcr_known_colours():
    def colour(r, g, b):
        return torch.tensor([r, g, b], dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 2, 2)

    white = rgb_to_ycbcr(colour(1, 1, 1))[0, :, 0, 0]
    assert torch.allclose(white, torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    black = rgb_to_ycbcr(colour(-1, -1, -1))[0, :, 0, 0]
    assert torch.allclose(black, torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)
    grey = rgb_to_ycbcr(colour(0.3, 0.3, 0.3))[0, :, 0, 0]
    assert torch.allclose(grey, torch.tensor([0.3, 0.0, 0.0]), atol=1e-6)
    red = rgb_to_ycbcr(colour(1, -1, -1))[0, :, 0, 0]  # Y = 2 * 0.299 - 1, Cb = -2 * 0.168736, Cr = 1
    assert torch.allclose(red, torch.tensor([2 * 0.299 - 1, -2 * 0.168736, 1.0]), atol=1e-6)
    blue = rgb_to_ycbcr(colour(-1, -1, 1))[0, :, 0, 0]
    assert blue[1].item() == pytest.approx(1.0, abs=1e-6)  # Cb maximal for pure blue


@pytest.mark.parametrize("fn", [l1_loss, mse_loss, ssim_loss, ycbcr_loss], ids=lambda f: f.__name__)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_term_zero_for_identical_positive_otherwise(fn, channels):
    x = smooth_images(3, channels, 32, seed=1)
    y = smooth_images(3, channels, 32, seed=2)
    same = fn(x, x.clone())
    assert same.shape == (3,)
    assert torch.allclose(same, torch.zeros(3), atol=1e-5)
    diff = fn(x, y)
    assert diff.shape == (3,)
    assert torch.all(diff > 1e-3)


def test_ssim_term_matches_torchmetrics():
    x, y = smooth_images(4, 3, 32, seed=1), smooth_images(4, 3, 32, seed=2)
    ours = ssim_loss(y, x)
    for i in range(4):
        ref = structural_similarity_index_measure(y[i : i + 1], x[i : i + 1], data_range=2.0)
        assert ours[i].item() == pytest.approx(1 - ref.item(), abs=1e-5)


@pytest.mark.parametrize("shape", [(8, 1, 16, 16), (3, 3, 24, 20), (2, 1, 6, 9)])
def test_ssim_term_and_its_gradient_match_torchmetrics_convolution(shape):
    """The blur as two matrix products is torchmetrics' reflect-padded 11x11 window, values and gradients alike,
    down to the smallest image reflect padding allows (6 px)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn(shape, generator=gen)).clamp(-1, 1)
    ours_in, ref_in = y.clone().requires_grad_(), y.clone().requires_grad_()
    ours = ssim_loss(ours_in, x)
    ref = 1 - structural_similarity_index_measure(ref_in, x, data_range=2.0, reduction="none")
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    (ours * torch.arange(1.0, shape[0] + 1)).sum().backward()
    (ref * torch.arange(1.0, shape[0] + 1)).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-6, rtol=1e-4)
    with pytest.raises(UserError, match="vae.loss.ssim"):
        ssim_loss(y[..., :5, :], x[..., :5, :])


def test_ycbcr_term_is_luma_ssim_plus_chroma_l1():
    x, y = smooth_images(2, 3, 32, seed=1), smooth_images(2, 3, 32, seed=2)
    cx, cy = rgb_to_ycbcr(x), rgb_to_ycbcr(y)
    expected = ssim_loss(cy[:, :1], cx[:, :1]) + (cy[:, 1:] - cx[:, 1:]).abs().flatten(1).mean(1)
    assert torch.allclose(ycbcr_loss(y, x), expected, atol=1e-6)
    g = smooth_images(2, 1, 32, seed=3)
    assert torch.allclose(ycbcr_loss(g, x[:, :1]), ssim_loss(g, x[:, :1]))
    with pytest.raises(UserError, match="vae.loss.ycbcr"):
        ycbcr_loss(images(1, 2, 32), images(1, 2, 32))


def test_combination_weights_add_up():
    x, y = smooth_images(3, 3, 32, seed=1), smooth_images(3, 3, 32, seed=2)
    loss = ReconstructionLoss(LossConfig(l1=2.0, mse=0.5, ssim=0.25, ycbcr=3.0))
    total, terms = loss(y, x)
    assert set(terms) == {"l1", "mse", "ssim", "ycbcr"}
    assert total.shape == (3,)
    expected = 2.0 * l1_loss(y, x) + 0.5 * mse_loss(y, x) + 0.25 * ssim_loss(y, x) + 3.0 * ycbcr_loss(y, x)
    assert torch.allclose(total, expected, atol=1e-6)
    for name in terms:
        assert terms[name].shape == (3,)
    only_l1_total, only_l1_terms = ReconstructionLoss(LossConfig())(y, x)
    assert set(only_l1_terms) == {"l1"}
    assert torch.allclose(only_l1_total, l1_loss(y, x))


def test_reconstruction_loss_backpropagates():
    x = smooth_images(2, 3, 32, seed=1)
    y = smooth_images(2, 3, 32, seed=2).requires_grad_(True)
    total, _ = ReconstructionLoss(LossConfig(l1=1.0, mse=1.0, ssim=1.0, ycbcr=1.0))(y, x)
    total.mean().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


# ----- LPIPS ----------------------------------------------------------------------------------------------------
@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights from the internet fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download {args[:1]}")

    import torchvision.models._api as tv_api

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse, raising=False)


@pytest.fixture
def empty_hub(monkeypatch, tmp_path):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture(scope="module")
def lpips_alex_file(tmp_path_factory) -> Path:
    """A full LPIPS state_dict made offline: random backbone, the package's own linear layers."""
    import warnings

    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    path = tmp_path_factory.mktemp("lpips") / "lpips_alex.pth"
    torch.save(model.state_dict(), path)
    return path


def test_lpips_without_weights_names_the_file_and_folder(empty_hub, no_downloads):
    with pytest.raises(UserError) as info:
        ReconstructionLoss(LossConfig(lpips=1.0))
    message = str(info.value)
    assert BACKBONE_FILES["alex"] == "alexnet-owt-7be5be79.pth"
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(empty_hub / "checkpoints") in message
    assert "vae.loss.lpips_weights" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="vgg16-397923af.pth"):
        build_lpips("vgg")


def test_lpips_with_missing_weights_file(tmp_path, no_downloads):
    with pytest.raises(UserError, match="vae.loss.lpips_weights: no file"):
        build_lpips("alex", str(tmp_path / "nope.pth"))


def test_lpips_with_corrupt_or_wrong_weights(tmp_path, no_downloads):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read"):
        build_lpips("alex", str(bad))
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo": torch.zeros(1)}, unrelated)
    with pytest.raises(UserError, match="neither"):
        build_lpips("alex", str(unrelated))


def test_lpips_weights_of_another_net_are_rejected(lpips_alex_file, no_downloads):
    with pytest.raises(UserError, match="lpips_net='squeeze'"):
        build_lpips("squeeze", str(lpips_alex_file))


@pytest.mark.parametrize("channels", [1, 3])
def test_lpips_from_local_file(lpips_alex_file, no_downloads, channels):
    loss = ReconstructionLoss(LossConfig(l1=0.0, lpips=1.0, lpips_weights=str(lpips_alex_file)))
    x, y = smooth_images(2, channels, 32, seed=1), smooth_images(2, channels, 32, seed=2)
    total, terms = loss(x, x.clone())
    assert set(terms) == {"lpips"}
    assert terms["lpips"].shape == (2,)
    assert torch.allclose(total, torch.zeros(2), atol=1e-6)
    total, terms = loss(y, x)
    assert torch.all(total > 0)
    # the frozen LPIPS net stays out of parameters and checkpoints
    assert list(loss.parameters()) == []
    assert loss.state_dict() == {}
    # the file's weights are what got loaded
    saved = torch.load(lpips_alex_file, weights_only=True)
    assert torch.equal(loss._lpips.state_dict()["net.slice1.0.weight"], saved["net.slice1.0.weight"])
    with pytest.raises(UserError, match="16x16"):
        loss(images(1, channels, 16), images(1, channels, 16))


def test_lpips_from_torchvision_cache(lpips_alex_file, empty_hub, no_downloads):
    # torchvision's alexnet file layout: features.<i>.<param> (+ classifier.*, which LPIPS does not use)
    saved = torch.load(lpips_alex_file, weights_only=True)
    backbone = {"features." + k.split(".", 2)[2]: v + 1.0 for k, v in saved.items() if k.startswith("net.")}
    backbone["classifier.1.weight"] = torch.zeros(2, 2)
    (empty_hub / "checkpoints").mkdir(parents=True)
    torch.save(backbone, empty_hub / "checkpoints" / BACKBONE_FILES["alex"])
    model = build_lpips("alex")
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    state = model.state_dict()
    assert torch.equal(state["net.slice1.0.weight"], backbone["features.0.weight"])
    assert torch.equal(state["net.slice5.10.bias"], backbone["features.10.bias"])
    x = smooth_images(1, 3, 32)
    assert model(x, x).item() == pytest.approx(0.0, abs=1e-6)
