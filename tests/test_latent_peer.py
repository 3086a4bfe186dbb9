"""benchmarks.latent_peer: the diffusers UNet2DModel trained on our latents for the peer benchmark."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from benchmarks import latent_peer  # noqa: E402


def test_the_unet_matches_the_latents_and_keeps_a_null_class():
    unet = latent_peer.make_unet((4, 8, 8), num_classes=9, base=16)
    z = torch.randn(2, 4, 8, 8)
    assert unet(z, torch.tensor([5, 900]), class_labels=torch.tensor([0, 9])).sample.shape == z.shape  # 9 = null
    assert unet.config.num_class_embeds == 10


def test_the_training_target_is_v_under_the_cosine_schedule():
    """diffusers' timestep i is our t = i + 1 (our alpha_bar[0] = 1 is clean data): its velocity target is our v
    under model/base.py's cosine schedule."""
    from model import base

    scheduler, _ = latent_peer.schedulers()
    z0, eps, i = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.tensor([0, 499, 998])
    ab = base.make_schedule("cosine", latent_peer.T).alpha_bar[i + 1].view(-1, 1, 1, 1).float()
    assert torch.allclose(scheduler.get_velocity(z0, eps, i), base.v_from_x0_eps(z0, eps, ab), atol=1e-5)


def test_training_moves_the_ema_and_sampling_is_seeded():
    class Decoder:  # the pipeline's decode, as the identity on 4-channel latents
        @staticmethod
        def decode(z):
            return z.clamp(-1, 1)

    unet = latent_peer.make_unet((4, 8, 8), num_classes=3, base=16)
    before = [p.detach().clone() for p in unet.parameters()]
    latents, labels = torch.randn(16, 4, 8, 8), torch.arange(16) % 3
    ema, steps = latent_peer.train(unet, latents, labels, 60.0, batch_size=4, lr=1e-3, p_uncond=0.1, num_classes=3,
                                   seed=0, max_steps=3)
    assert steps == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, ema.parameters()))
    first = latent_peer.samples(Decoder, ema, torch.tensor([0, 2]), (4, 8, 8), seed=1)
    assert first.shape == (2, 4, 8, 8) and torch.equal(first, latent_peer.samples(Decoder, ema, torch.tensor([0, 2]),
                                                                                   (4, 8, 8), seed=1))


def test_sampling_an_oracle_reaches_a_latent_outside_the_pixel_range():
    """With the exact v of a one-point distribution z0 = 3 the DDIM sampler must land on 3: latents are not pixels,
    and a sampler that clips x0 to [-1, 1] (diffusers' default) would land on 1."""
    class Oracle:
        def __init__(self):
            _, scheduler = latent_peer.schedulers()
            self.alpha_bar = scheduler.alphas_cumprod

        def __call__(self, z, t, class_labels=None):
            ab = self.alpha_bar[int(t)]
            eps = (z - ab.sqrt() * 3.0) / (1 - ab).sqrt()
            return type("Out", (), {"sample": ab.sqrt() * eps - (1 - ab).sqrt() * 3.0})

    class Identity:
        @staticmethod
        def decode(z):
            return z

    x = latent_peer.samples(Identity, Oracle(), torch.tensor([0, 1]), (4, 2, 2), seed=0)
    assert torch.allclose(x, torch.full_like(x, 3.0), atol=1e-3)
