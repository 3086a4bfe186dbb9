"""A checkpoint and an export written by earlier code still load and draw the samples that code drew.

tests/fixtures/ holds a tiny class-conditional latent digits model (a training checkpoint and its safetensors export)
and the samples every sampler, spacing and sampling option drew from it when it was written
(tests/fixtures/make_reference.py). A change to the diffusion core that changes what a trained model samples fails
here. On the CPU that wrote them the samples are bit-identical; another CPU type rounds the network's float32 sums
differently, so the comparison allows float32 noise.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fixtures.make_reference import CASES, LABELS, partial_and_inpainted
from model.pipeline import LatentDiffusionPipeline

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "reference_samples.pt", weights_only=True)["samples"]


@pytest.fixture(scope="module", params=["tiny_digits.ckpt", "tiny_digits_export"])
def pipe(request, one_thread) -> LatentDiffusionPipeline:
    return LatentDiffusionPipeline.from_pretrained(FIXTURES / request.param)


LONG = {"ddpm-1000"}  # a thousand network calls: the slow tier draws it


@pytest.mark.parametrize("name,kwargs", [pytest.param(name, kwargs, id=name, marks=[pytest.mark.slow] * (name in LONG))
                                         for name, kwargs in CASES])
def test_every_sampler_draws_the_reference_samples(pipe, reference, name, kwargs):
    _, z = pipe.generate(len(LABELS), LABELS, seed=0, **kwargs)
    torch.testing.assert_close(z, reference[name], **TOLERANCE)


def test_partial_sampling_and_inpainting_draw_the_reference_samples(pipe, reference):
    drawn = partial_and_inpainted(pipe)
    for name, z in drawn.items():
        torch.testing.assert_close(z, reference[name], **TOLERANCE, msg=name)


def test_the_reference_cases_differ_from_each_other(reference):
    """Each case checks something of its own: no two of them drew the same samples."""
    names = sorted(reference)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if reference[a].shape == reference[b].shape:
                assert (reference[a] - reference[b]).abs().max() > 1e-3, (a, b)
