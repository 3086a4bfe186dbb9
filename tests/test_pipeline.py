"""The denoiser wrapper (model/denoising.py) and the Lightning-free pipeline (model/pipeline.py)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from model import base
from model.checkpoint import read_checkpoint, state_dict_under
from model.denoising import Denoiser
from model.errors import UserError
from model.denoiser import sample_shape
from model.pipeline import LatentDiffusionPipeline
from tiny import ROOT

f64 = torch.float64


class TinyConditionalNet(nn.Module):
    """(x, t, c) -> a fixed nonlinear function of all three, so guidance and labels change the output."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(4, 4, generator=g, dtype=f64))
        self.emb = nn.Parameter(torch.randn(classes + 1, 4, generator=g, dtype=f64))

    def forward(self, x, t, c=None):
        c = torch.full_like(t, self.emb.shape[0] - 1) if c is None else c
        return torch.tanh(x @ self.w + self.emb[c]) * (t[:, None] / 100.0)


def test_the_wrapper_is_the_math_of_model_base():
    s = base.make_schedule("cosine", 100)
    net = TinyConditionalNet()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=f64)
    c = torch.tensor([0, 1, 2, 0, 1])
    den = Denoiser(net, s, "v", num_classes=3)
    x0, eps = den(x, 40, c, clip_limit=0.5)
    ref = base.predict_x0_eps(net, x, 40, c, s, "v", clip_limit=0.5)
    assert torch.equal(x0, ref[0]) and torch.equal(eps, ref[1])
    # guidance: (1 + w) out(x, c) - w out(x, null) on the network output, then converted
    w, t = 2.5, torch.full((5,), 40)
    mixed = (1 + w) * net(x, t, c) - w * net(x, t, torch.full_like(c, 3))
    x0_ref, eps_ref = base.to_x0_eps(mixed, x, 40, s, "v")
    x0, eps = den.bind(c, guidance=w)(x, 40)
    torch.testing.assert_close(x0, x0_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps, eps_ref, rtol=1e-12, atol=1e-12)


def test_the_wrapper_normalises_latents_per_channel():
    den = Denoiser(nn.Identity(), base.make_schedule("cosine", 10), "v", latent_shift=torch.tensor([1.0, -2.0]),
                   latent_scale=torch.tensor([2.0, 0.5]))
    z = torch.randn(3, 2, 4, 4)
    n = den.normalise(z)
    torch.testing.assert_close(n[:, 0], (z[:, 0] - 1.0) / 2.0)
    torch.testing.assert_close(n[:, 1], (z[:, 1] + 2.0) / 0.5)
    torch.testing.assert_close(den.denormalise(n), z)
    assert Denoiser(nn.Identity(), base.make_schedule("cosine", 10), "v").normalise(z) is z  # pixels: identity


@pytest.mark.parametrize("kwargs,needle", [
    (dict(guidance=1.0), "unconditional"),
    (dict(c=torch.tensor([0, 5])), "class labels must lie in [0, 3]"),
    (dict(c=torch.tensor([0, 1]), clip_limit=0.0), "clip_limit"),
])
def test_the_wrapper_refuses_bad_options_once_when_bound(kwargs, needle):
    classes = 0 if "guidance" in kwargs else 3
    den = Denoiser(TinyConditionalNet(), base.make_schedule("cosine", 10), "v", num_classes=classes)
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):  # the math: no flag named
        den.bind(**kwargs)


# ----- the pipeline on a trained checkpoint -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(tiny_runs):
    return LatentDiffusionPipeline.from_pretrained(tiny_runs["latent"])


def test_the_pipeline_holds_the_ema_weights_vae_and_latent_statistics(pipe, tiny_runs):
    ckpt = read_checkpoint(tiny_runs["latent"])
    for name, value in state_dict_under(ckpt, "ema").items():
        assert torch.equal(pipe.net.state_dict()[name], value), name
    for name, value in state_dict_under(ckpt, "autoencoder").items():
        assert torch.equal(pipe.autoencoder.state_dict()[name], value), name
    assert torch.equal(pipe.denoiser.latent_shift, ckpt["state_dict"]["latent_shift"])
    assert pipe.num_classes == 10 and pipe.null_class == 10 and pipe.diff.parametrisation == "v"


def test_pipeline_samples_equal_the_sample_command(pipe, tiny_runs, tmp_path):
    from model.scripts.sample import main as sample_main

    assert sample_main(["--load", str(tiny_runs["latent"]), "--ddim", "--steps", "3", "--per-class", "1",
                        "--seed", "7", "--cfg-scale", "1.5", "--output", str(tmp_path)]) == 0
    written = np.load(tmp_path / "samples.npz")
    images = pipe(10, class_labels=list(range(10)), cfg_scale=1.5, sampler="ddim", steps=3, seed=7)
    assert images.dtype == np.uint8 and images.shape == (10, 16, 16, 1)
    np.testing.assert_array_equal(images, written["images"])


def test_s_noise_reaches_the_stochastic_sampler_from_the_command_and_the_pipeline(pipe, tiny_runs, tmp_path):
    from model.scripts.sample import main as sample_main

    assert sample_main(["--load", str(tiny_runs["latent"]), "--sampler", "dpmpp_2m_sde", "--steps", "3",
                        "--s-noise", "1.3", "--per-class", "1", "--seed", "7", "--output", str(tmp_path)]) == 0
    images, z = pipe(10, class_labels=list(range(10)), sampler="dpmpp_2m_sde", steps=3, seed=7, s_noise=1.3,
                     return_latents=True)
    np.testing.assert_array_equal(images, np.load(tmp_path / "samples.npz")["images"])
    _, z_own = pipe(10, class_labels=list(range(10)), sampler="dpmpp_2m_sde", steps=3, seed=7, return_latents=True)
    assert (z - z_own).abs().max() > 1e-3
    # a deterministic solver draws no noise to scale
    _, a = pipe(4, sampler="dpmpp_2m", steps=3, seed=7, s_noise=1.3, return_latents=True)
    _, b = pipe(4, sampler="dpmpp_2m", steps=3, seed=7, return_latents=True)
    assert torch.equal(a, b)


def test_the_guidance_interval_reaches_the_sample_command_and_the_pipeline(pipe, tiny_runs, tmp_path, capsys):
    from model.scripts.sample import main as sample_main

    assert sample_main(["--load", str(tiny_runs["latent"]), "--sampler", "dpmpp_2m", "--steps", "3", "--per-class",
                        "1", "--seed", "7", "--cfg-scale", "1.5", "--guidance-interval", "2", "inf",
                        "--output", str(tmp_path)]) == 0
    assert "guidance for σ in (2, inf]), w = 1.5" in capsys.readouterr().out
    images = pipe(10, class_labels=list(range(10)), sampler="dpmpp_2m", steps=3, seed=7, cfg_scale=1.5,
                  guidance_interval=(2.0, math.inf))
    np.testing.assert_array_equal(images, np.load(tmp_path / "samples.npz")["images"])


@pytest.mark.parametrize("command,argv", [("sample", ["--load", "ckpt"]), ("evaluate", ["--load", "ckpt"]),
                                          ("demo_report", ["--load", "ckpt", "--classifier", "clf.pt"])])
def test_the_sampling_commands_take_the_guidance_interval_or_the_checkpoints(command, argv):
    import importlib

    from model.config import DiffusionConfig
    from model.scripts.common import sampler_spec

    parser = importlib.import_module(f"model.scripts.{command}").make_parser()
    diff = DiffusionConfig(guidance_interval=[0.3, 4.0])
    given = parser.parse_args(argv + ["--guidance-interval", "3", "inf"])
    assert sampler_spec(given, diff).guidance_interval == (3.0, math.inf)
    assert sampler_spec(parser.parse_args(argv), diff).guidance_interval == (0.3, 4.0)


def test_pipeline_call_is_reproducible_batched_and_returns_latents(pipe):
    a, z = pipe(5, sampler="dpmpp_2m", steps=3, seed=1, batch_size=2, return_latents=True)
    b = pipe(5, sampler="dpmpp_2m", steps=3, seed=1, batch_size=2)
    np.testing.assert_array_equal(a, b)
    assert z.shape == sample_shape(pipe.cfg, 5) and not np.array_equal(a, pipe(5, steps=3, seed=2, batch_size=2))
    # decoding the returned latents gives the images
    np.testing.assert_array_equal(((pipe.decode(z).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
                                  .numpy(), a)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(n=0), "must be > 0"), (dict(n=3, class_labels=[1, 2]), "2 class labels for 3 samples"),
    (dict(n=2, batch_size=0), "batch size"), (dict(n=2, sampler="plms"), "unknown sampler"),
])
def test_pipeline_call_refuses_bad_arguments(pipe, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        pipe(steps=2, **kwargs)


@pytest.mark.slow
def test_sampling_in_a_fresh_process_never_imports_lightning(tiny_runs):
    code = (f"import sys\nfrom model.pipeline import LatentDiffusionPipeline\n"
            f"pipe = LatentDiffusionPipeline.from_pretrained({str(tiny_runs['latent'])!r})\n"
            f"images = pipe(4, class_labels=[0, 1, 2, 3], steps=2)\n"
            f"print(images.shape, sorted(m for m in sys.modules if 'lightning' in m and 'latent_diffusion' not in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "(4, 16, 16, 1) []"
