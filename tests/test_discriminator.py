"""The VAE's optional patch discriminator: hinge losses and the adaptive weight against closed forms, gradients that
reach only the network each term trains, patch-local logits, one-line config errors, and exact resume across the
step where it switches on."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.autoencoder import DiscConfig
from model.autoencoder.discriminator import (DELTA, MAX_WEIGHT, PatchDiscriminator, adaptive_weight,
                                             deepest_fitting, generator_loss, hinge_d_loss, patch_grid)
from model.errors import UserError


def test_hinge_losses_match_their_closed_forms():
    ones = torch.ones(4, 1, 3, 3)
    assert float(hinge_d_loss(2 * ones, -2 * ones)) == 0.0  # real ≥ 1 and fake ≤ −1: nothing left to learn
    assert float(hinge_d_loss(0 * ones, 0 * ones)) == 1.0  # ½ (1 + 1)
    assert float(hinge_d_loss(0.5 * ones, 0.5 * ones)) == pytest.approx(0.5 * (0.5 + 1.5))
    logits = torch.randn(4, 1, 3, 3)
    assert float(generator_loss(logits)) == pytest.approx(-float(logits.mean()))


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    w = torch.randn(3, 4, requires_grad=True)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    weight = adaptive_weight((w * a).sum(), (w * b).sum(), w)  # ∇_w = a and b
    assert float(weight) == pytest.approx(float(a.norm() / (b.norm() + DELTA)), rel=1e-6)
    assert not weight.requires_grad and w.grad is None  # a constant factor; nothing accumulated
    assert float(adaptive_weight((w * a).sum(), (w * 0).sum(), w)) == MAX_WEIGHT  # clamped, not a / δ


def test_the_frozen_discriminator_sends_gradients_to_the_images_only():
    d = PatchDiscriminator(1, 8, 2)
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    out = d.frozen(x)
    assert torch.equal(out, d(x))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())


def test_the_discriminator_scores_local_patches():
    d = PatchDiscriminator(1, 8, 2).eval()
    x = torch.randn(1, 1, 32, 32)
    logits = d(x)
    assert logits.shape == (1, 1, 6, 6)
    y = x.clone()
    y[..., :2, :2] += 5.0  # the top-left corner only
    changed = (d(y) - logits).abs()[0, 0] > 1e-6
    assert changed[0, 0]  # the logits whose 34-px receptive field holds the corner, and no other
    assert not changed[4:].any() and not changed[:, 4:].any()


def test_the_two_terms_train_only_their_own_network():
    """One backward of the summed loss: the VAE's gradient is that of recon + β·KL + λ·L_G alone and the
    discriminator's that of L_D alone (the generator term never reaches D, the discriminator term never the VAE)."""
    from model.config import Config, VAEStage, to_dict
    from model.lightning.systems.vae import VAESystem

    cfg = Config()
    cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, disc=DiscConfig(weight=0.5, base_channels=8,
                                                                                   layers=2)))
    system = VAESystem(to_dict(cfg))
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    loss, logs = system.training_loss(x)
    vae_params, d_params = list(system.vae.parameters()), list(system.disc.parameters())
    got_vae = torch.autograd.grad(loss, vae_params, retain_graph=True)
    got_d = torch.autograd.grad(loss, d_params, retain_graph=True)
    d_loss = logs["train/d_loss"]
    vae_loss = loss - d_loss
    want_vae = torch.autograd.grad(vae_loss, vae_params, retain_graph=True)
    want_d = torch.autograd.grad(d_loss, d_params, retain_graph=True)
    assert float(logs["train/d_weight"]) > 0 and float(d_loss.detach()) > 0
    for got, want in ((got_vae, want_vae), (got_d, want_d)):
        assert all(torch.allclose(g, w, atol=1e-7) for g, w in zip(got, want))
    assert any(g.abs().sum() > 0 for g in got_d)
    assert isinstance(VAEStage().disc, DiscConfig) and not VAEStage().disc.enabled  # off by default


@pytest.mark.parametrize("field, value, needle", [("weight", -1.0, "vae.disc.weight"),
                                                  ("base_channels", 0, "vae.disc.base_channels"),
                                                  ("layers", 0, "vae.disc.layers"),
                                                  ("betas", [0.5], "vae.disc.betas")])
def test_bad_discriminator_settings_are_one_line_errors(field, value, needle):
    with pytest.raises(UserError, match=needle) as err:
        DiscConfig(**{field: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size", [8, 16, 24, 32])
def test_the_depth_check_agrees_with_the_network(size):
    """patch_grid is the logit grid of the real network, and one layer more than deepest_fitting does not run."""
    deepest = deepest_fitting(size)
    for layers in range(1, deepest + 1):
        out = PatchDiscriminator(1, 4, layers)(torch.zeros(1, 1, size, size))
        assert out.shape[-2:] == (patch_grid(size, layers),) * 2, layers
    assert patch_grid(size, deepest + 1) == 0
    with pytest.raises(RuntimeError):
        PatchDiscriminator(1, 4, deepest + 1)(torch.zeros(1, 1, size, size))


def test_a_discriminator_too_deep_for_the_images_is_refused_with_the_deepest_that_fits():
    from model.config import Config, DataConfig, VAEStage

    with pytest.raises(UserError, match="at most 2") as err:
        Config(data=DataConfig(image_size=16), vae=VAEStage(disc=DiscConfig(weight=0.5, layers=9)))
    assert "vae.disc.layers 9" in str(err.value) and "\n" not in str(err.value)
    Config(data=DataConfig(image_size=16), vae=VAEStage(disc=DiscConfig(weight=0.0, layers=9)))  # off: not checked
