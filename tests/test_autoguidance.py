"""Autoguidance (Karras et al. 2024): the guided output, the guide training keeps, and how checkpoints carry it."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model import base
from model.checkpoint import read_checkpoint, state_dict_under
from model.config import DenoiserStage, DiffusionConfig, TrainerConfig
from model.denoising import Denoiser
from model.errors import UserError
from model.pipeline import LatentDiffusionPipeline
from model.sampling import SamplerSpec
from tiny import DIGITS, tiny

f64 = torch.float64


class Linear(nn.Module):
    """(x, t, c) -> k x: a network whose guided output has a closed form."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x, t, c=None):
        return self.k * x


def test_the_guided_output_steps_away_from_the_guide_by_the_weight():
    x, t = torch.randn(5, 3, dtype=f64), torch.zeros(5)
    for a in (0.3, 1.0, 2.5):  # guide x, network 2x: x + (1 + a)(2x - x) = (2 + a) x
        assert torch.allclose(base.autoguidance(Linear(2.0), Linear(1.0), a)(x, t, None), (2.0 + a) * x)
    net = Linear(2.0)
    assert base.autoguidance(net, Linear(1.0), 0.0) is net  # a = 0: the network itself, not a copy of its output
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="autoguidance weight"):
            base.autoguidance(net, Linear(1.0), bad)


def sample(den: Denoiser, a: float) -> torch.Tensor:
    spec = SamplerSpec("dpmpp_2m_sde", steps=4, autoguidance=a)  # stochastic: the same generator draws the noise
    x_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=f64)
    return den.sample(x_T, torch.arange(6) % 3, spec, generator=torch.Generator().manual_seed(2))


def test_a_guide_equal_to_the_network_changes_no_bit_and_another_guide_does():
    from test_pipeline import TinyConditionalNet

    net, schedule = TinyConditionalNet(), base.make_schedule("cosine", 100)
    plain = sample(Denoiser(net, schedule, "v", num_classes=3), 0.0)
    assert torch.equal(sample(Denoiser(net, schedule, "v", num_classes=3, guide=net), 0.7), plain)
    weaker = TinyConditionalNet()
    with torch.no_grad():
        weaker.w.mul_(0.5)
    guided = sample(Denoiser(net, schedule, "v", num_classes=3, guide=weaker), 0.7)
    assert not torch.allclose(guided, plain)
    assert torch.equal(sample(Denoiser(net, schedule, "v", num_classes=3, guide=weaker), 0.0), plain)


def test_a_denoiser_without_a_guide_refuses_autoguidance():
    from test_pipeline import TinyConditionalNet

    den = Denoiser(TinyConditionalNet(), base.make_schedule("cosine", 100), "v", num_classes=3)
    with pytest.raises(ValueError, match="needs a guide network"):
        sample(den, 0.3)


def test_the_guide_step_is_the_fraction_of_the_steps_at_least_one():
    def stage(fraction: float, steps: int) -> DenoiserStage:
        diffusion = DiffusionConfig(autoguidance=0.3 if fraction else 0.0, guide_fraction=fraction)
        return DenoiserStage(diffusion=diffusion, trainer=TrainerConfig(max_steps=steps))

    assert stage(0.18, 1700).guide_step == 306
    assert stage(0.18, 4).guide_step == 1
    assert stage(0.0, 1700).guide_step == 0
    with pytest.raises(UserError, match="guide_fraction"):
        DiffusionConfig(autoguidance=0.3)  # a weight without a guide
    with pytest.raises(UserError, match=r"guide_fraction must be in \[0, 1\)"):
        DiffusionConfig(guide_fraction=1.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs of 4 steps with a checkpoint after every step: one keeps the guide at step 2 and samples with
    autoguidance 0.3 by default, one keeps none."""
    from model.main import main

    root = tmp_path_factory.mktemp("autoguidance")
    common = ["-cfg", DIGITS, "--train-vae", "--train-denoiser", "--output_dir", str(root), *tiny(val_every=100),
              "--vae.trainer.max_steps", "2", "--denoiser.trainer.max_steps", "4",
              "--denoiser.trainer.checkpoint_every_n_steps", "1"]
    assert main([*common, "-n", "1", "--denoiser.diffusion.guide_fraction", "0.5",
                 "--denoiser.diffusion.autoguidance", "0.3"]) == 0
    assert main([*common, "-n", "2", "--denoiser.diffusion.guide_fraction", "0",
                 "--denoiser.diffusion.autoguidance", "0"]) == 0
    return root / "digits-1" / "denoiser" / "checkpoints", root / "digits-2" / "denoiser" / "checkpoints"


def test_training_keeps_the_ema_of_the_guide_step_and_trains_the_same_weights(runs):
    guided, plain = runs
    last = read_checkpoint(guided / "last.ckpt")["state_dict"]
    ema_at_2 = state_dict_under(read_checkpoint(guided / "step0000002.ckpt"), "ema")
    guide = {k[len("guide."):]: v for k, v in last.items() if k.startswith("guide.")}
    assert guide.keys() == ema_at_2.keys() and all(torch.equal(guide[k], ema_at_2[k]) for k in guide)
    assert not torch.equal(guide["stem.weight"], last["ema.stem.weight"])  # two more steps moved the EMA on
    assert not bool(read_checkpoint(guided / "step0000001.ckpt")["state_dict"]["guide_ready"])
    assert bool(last["guide_ready"])
    without = read_checkpoint(plain / "last.ckpt")["state_dict"]
    assert not any(k.startswith("guide") for k in without)  # no guide: the checkpoint keeps its keys
    assert all(torch.equal(without[k], last[k]) for k in without if k.startswith(("net.", "ema.")))


def test_a_checkpoint_before_the_guide_step_samples_without_autoguidance(runs):
    guided, _ = runs
    early = LatentDiffusionPipeline.from_pretrained(guided / "step0000001.ckpt")
    assert early.denoiser.guide is None and early.spec().autoguidance == 0.0
    late = LatentDiffusionPipeline.from_pretrained(guided / "last.ckpt")
    assert late.denoiser.guide is not None and late.spec().autoguidance == 0.3  # its config's
    on, off = (late.sample(4, torch.arange(4), generator=torch.Generator().manual_seed(0), autoguidance=a)
               for a in (0.3, 0.0))
    assert not torch.allclose(on, off)
    with pytest.raises(UserError, match="needs the guide network.*--autoguidance 0"):  # the pipeline's boundary
        early.sample(2, torch.arange(2), autoguidance=0.3)
