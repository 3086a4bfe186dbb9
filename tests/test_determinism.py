"""What is bit-identical (docs/reliability.md, "Determinism"): on one machine, the same seed and the same number of
threads give the same samples, to the last bit, in any fresh process. Training is checked the same way in
tests/test_faults.py (the same loss curve and weights)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

SAMPLERS = ("ddim", "ddpm", "dpmpp_2m_sde")  # deterministic, ancestral, and the digits config's SDE solver
DRAW = """
import sys, torch
torch.set_num_threads(int(sys.argv[3]))
from model.pipeline import LatentDiffusionPipeline
pipe = LatentDiffusionPipeline.from_pretrained(sys.argv[1])
z = {s: pipe.generate(6, torch.arange(6) % 10, sampler=s, steps=5, seed=7, batch_size=4)[1]
     for s in sys.argv[4].split(",")}
torch.save(z, sys.argv[2])
"""


def draw(ckpt, path, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", DRAW, str(ckpt), str(path), str(threads), ",".join(SAMPLERS)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(path)


@pytest.mark.slow
def test_the_same_seed_and_threads_give_the_same_samples_in_any_process(tiny_runs, tmp_path):
    a = draw(tiny_runs["latent"], tmp_path / "a.pt", threads=2)
    b = draw(tiny_runs["latent"], tmp_path / "b.pt", threads=2)
    for sampler in SAMPLERS:  # deterministic, and stochastic (the generator's stream)
        assert torch.equal(a[sampler], b[sampler]), sampler
    assert not torch.equal(a["ddim"], a["ddpm"]) and not torch.equal(a["ddpm"], a["dpmpp_2m_sde"])
