"""Schedule and guidance options from the literature, each shown by its defining property.

- Zero terminal SNR (Lin et al. 2024, Alg. 1): alpha_bar_T = 0 exactly, alpha_bar_1 kept, sqrt(alpha_bar) an affine
  image of the original; a v network then samples its data distribution from pure noise, which the original table
  (terminal SNR > 0, yet sampled from pure noise) cannot.
- CFG rescale (Lin et al. 2024, eq. 15-16): at φ = 1 the guided output has the conditional output's std; φ = 0 is
  plain guidance; diffusers' `rescale_noise_cfg` gives the same numbers.
- Offset noise (Guttenberg 2023): the training noise's per-channel mean gets variance offset² on top of 1 / (H W),
  and offset 0 draws the plain noise bit for bit.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from model import base
from model.denoising import Denoiser
from model.sampling import SAMPLERS, SamplerSpec, sample
from wrap import swapped

f64 = torch.float64
MU, S = 0.7, 0.5  # data x0 ~ N(MU, S^2)


# ----- zero terminal SNR -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,T", [("linear", 1000), ("linear", 200), ("cosine", 1000), ("sigmoid", 300)])
def test_zero_terminal_snr_ends_at_pure_noise_and_keeps_the_first_step(name, T):
    before = base.make_schedule(name, T).alpha_bar
    after = base.make_schedule(name, T, zero_terminal_snr=True).alpha_bar
    assert after[T].item() == 0.0 and after[0].item() == 1.0
    assert after[1].item() == pytest.approx(before[1].item(), rel=1e-12)
    assert bool((after[1:] < after[:-1]).all())
    # sqrt(alpha_bar) is shifted and scaled, nothing else: an affine image of the original over t = 1..T
    slope = after[1:T].sqrt() / (before[1:T].sqrt() - before[T].sqrt())  # 0 / 0 at T
    torch.testing.assert_close(slope, torch.full_like(slope, slope[0].item()), rtol=1e-9, atol=0)


def test_zero_terminal_snr_is_diffusers_rescale():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    ours = base.make_schedule("linear", 1000, zero_terminal_snr=True).alpha_bar[1:]
    betas = 1 - base.make_schedule("linear", 1000).alpha_bar[1:] / base.make_schedule("linear", 1000).alpha_bar[:-1]
    theirs = torch.cumprod(1 - rescale_zero_terminal_snr(betas.clone()), dim=0)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-15)
    assert diffusers is not None


def exact_v_network(schedule: base.Schedule):
    """The v network that is right for x0 ~ N(MU, S^2), finite at pure noise: E[x0 | x] = MU + a S^2 / (a^2 S^2 + s^2)
    (x - a MU) at x = a x0 + s eps, eps from it, v = a eps - s x0 (Salimans & Ho 2022)."""
    def net(x: torch.Tensor, t: torch.Tensor, c=None) -> torch.Tensor:
        ab = schedule.ab_at(float(t.reshape(-1)[0]) / schedule.T)
        a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
        x0 = MU + a * S**2 / (a**2 * S**2 + s**2) * (x - a * MU)
        eps = (x - a * x0) / s
        return a * eps - s * x0

    return net


def samples_from_pure_noise(schedule: base.Schedule, sampler: str, n: int = 40_000) -> torch.Tensor:
    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=f64)  # no signal at all
    denoise = Denoiser(exact_v_network(schedule), schedule, "v").bind()
    return sample(denoise, x_T, schedule, SamplerSpec(sampler, 50), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("sampler", [name for name, info in SAMPLERS.items() if not info.stochastic])
def test_a_v_network_samples_the_data_from_pure_noise_on_a_zero_terminal_snr_table(sampler):
    # linear with T = 200 ends at alpha_bar_T = 0.13: sampled from pure noise it starts from the wrong distribution
    # (the data mean is lost, 0.56 instead of 0.70); rescaled, pure noise is exactly the distribution at T. The
    # deterministic samplers carry the start's error to the end (stochastic ones partly forget it).
    n, se = 40_000, S / math.sqrt(40_000)
    zero = samples_from_pure_noise(base.make_schedule("linear", 200, zero_terminal_snr=True), sampler, n)
    assert abs(zero.mean().item() - MU) < 5 * se
    assert zero.std().item() == pytest.approx(S, rel=0.05)
    original = samples_from_pure_noise(base.make_schedule("linear", 200), sampler, n)
    assert abs(original.mean().item() - MU) > 20 * se


def test_zero_terminal_snr_needs_a_network_that_can_predict_at_pure_noise():
    from model.config import DiffusionConfig
    from model.errors import UserError

    with pytest.raises(UserError, match="parametrisation to v"):
        DiffusionConfig(zero_terminal_snr=True, parametrisation="eps")
    assert DiffusionConfig(zero_terminal_snr=True).zero_terminal_snr


# ----- CFG rescale -------------------------------------------------------------------------------------------------
def two_outputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g, dtype=f64), 2.0 * torch.randn(4, 3, 8, 8, generator=g, dtype=f64) + 1


def guided_by(cond: torch.Tensor, uncond: torch.Tensor, w: float, phi: float) -> torch.Tensor:
    """classifier_free_guidance on a network that returns `cond` for labels and `uncond` for the null class."""
    net = lambda x, t, c: torch.where((c == 10).reshape(-1, 1, 1, 1), torch.cat([uncond, uncond]),  # noqa: E731
                                      torch.cat([cond, cond]))
    guided = base.classifier_free_guidance(net, w, null_class=10, rescale=phi)
    return guided(torch.zeros_like(cond), torch.zeros(4), torch.arange(4))


def test_full_cfg_rescale_gives_the_conditional_std_and_none_gives_plain_guidance():
    cond, uncond = two_outputs()
    plain = (1 + 4.0) * cond - 4.0 * uncond
    torch.testing.assert_close(guided_by(cond, uncond, 4.0, 0.0), plain, rtol=0, atol=0)
    full = guided_by(cond, uncond, 4.0, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-12, atol=0)
    assert (plain.std(dim=(1, 2, 3)) / cond.std(dim=(1, 2, 3))).min() > 2  # guidance had inflated it
    half = guided_by(cond, uncond, 4.0, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain, rtol=1e-12, atol=1e-12)


def test_cfg_rescale_is_diffusers_rescale_noise_cfg():
    pytest.importorskip("diffusers")
    from diffusers.guiders.guider_utils import rescale_noise_cfg  # the pipelines' copy needs transformers

    cond, uncond = two_outputs(1)
    w = 6.5  # diffusers' scale s is our 1 + w: uncond + s (cond - uncond)
    theirs = rescale_noise_cfg(uncond + (1 + w) * (cond - uncond), cond, guidance_rescale=0.7)
    torch.testing.assert_close(guided_by(cond, uncond, w, 0.7), theirs, rtol=1e-12, atol=1e-12)


def test_the_spec_takes_the_rescale_from_the_config_and_refuses_values_outside_0_1():
    from model.config import DiffusionConfig
    from model.errors import UserError

    assert SamplerSpec.from_config(DiffusionConfig(guidance_rescale=0.7)).guidance_rescale == 0.7
    assert SamplerSpec.from_config(DiffusionConfig(), guidance_rescale=0.3).guidance_rescale == 0.3
    with pytest.raises(UserError, match="rescale"):
        SamplerSpec(guidance_rescale=1.5)


# ----- offset noise ------------------------------------------------------------------------------------------------
def test_offset_noise_adds_a_per_channel_constant_of_variance_offset_squared():
    x0 = torch.zeros(4000, 3, 8, 8)
    torch.manual_seed(0)
    plain = torch.randn_like(x0)
    torch.manual_seed(0)
    assert torch.equal(base.training_noise(x0, 0.0), plain)  # offset 0: the same draws as before
    offset = 0.3
    eps = base.training_noise(x0, offset)
    channel_means = eps.mean(dim=(2, 3))  # (B, C)
    assert channel_means.var().item() == pytest.approx(1 / 64 + offset**2, rel=0.05)
    assert plain.mean(dim=(2, 3)).var().item() == pytest.approx(1 / 64, rel=0.05)
    assert eps.var().item() == pytest.approx(1 + offset**2, rel=0.02)


def test_training_draws_offset_noise_when_configured():
    from model.config import Config
    from model.lightning.systems.denoiser import DenoiserSystem

    cfg = Config()
    cfg.data.image_size, cfg.data.channels = 8, 1
    cfg.denoiser.autoencoder = "none"
    cfg.denoiser.unet = dataclasses.replace(cfg.denoiser.unet, in_channels=1, base_channels=8, channel_mult=[1],
                                            attention_levels=[], num_classes=0)
    cfg.denoiser.diffusion.offset_noise = 0.5
    system = DenoiserSystem(dataclasses.asdict(cfg))
    seen = []

    class Seen(Exception):
        pass

    def spy(net, z0, c, t, eps):
        seen.append(eps)
        raise Seen

    with swapped(system, "loss_at", spy), pytest.raises(Seen):
        system.training_step((torch.zeros(2000, 1, 8, 8), torch.zeros(2000, dtype=torch.long)), 0)
    assert seen[0].mean(dim=(2, 3)).var().item() == pytest.approx(1 / 64 + 0.25, rel=0.1)
