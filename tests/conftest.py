"""Fixtures shared by several test files: one torch thread for tiny-tensor math (and per `pytest -n` worker), and tiny
trained runs."""
from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest

from tiny import DIGITS, ROOT, tiny

# torch is imported where it is needed, not here: `pytest -n N` starts its workers only after this file is read, and
# importing torch first delayed them by about 2 s
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N`: N workers share the cores, so each takes one thread, and so do the commands it starts;
    # several threads per worker spin-wait on each other (see one_thread) and made the fast tier 4x slower
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

_monkeypatch_setattr = pytest.MonkeyPatch.setattr


def _setattr_refusing_modules(self, target, *args, **kwargs):
    """`monkeypatch.setattr` on an `nn.Module` instance is refused: pytest >= 9.2 undoes it by deleting children,
    parameters and buffers (it looks for the old value in the instance `__dict__` only). Use `wrap.swapped`."""
    torch = sys.modules.get("torch")  # no torch loaded: the target cannot be a module
    if torch is not None and isinstance(target, torch.nn.Module):
        raise TypeError(f"monkeypatch.setattr on a {type(target).__name__} instance cannot be undone safely; "
                        f"use tests/wrap.py swapped(obj, name, value)")
    return _monkeypatch_setattr(self, target, *args, **kwargs)


pytest.MonkeyPatch.setattr = _setattr_refusing_modules


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Python's garbage collections at exit walk every object torch, sympy and dynamo made (about half a million) and
    free nothing a finished run needs: frozen, they are skipped, which saves 1-2 s of each process's exit."""
    gc.freeze()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors: with more, the OpenMP threads' spin-waits on a busy 2-core
    machine made test_base.py 10x slower (114 s instead of 12 s). Restored afterwards for the other files."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of three tiny runs trained for a few steps (not converged; the tests check the plumbing):

    - "vae", "latent", "latent_run": digits 16x16, VAE + class-conditional latent denoiser (4 steps each),
      with metrics.csv logged every step and both stages profiled (trainer.profile);
    - "pixel": a class-conditional pixel-space denoiser on the same digits (no autoencoder);
    - "toy": the 2-D toy (MLP on points), T = 100 so that full DDPM runs are quick.
    """
    from model.main import main

    root = tmp_path_factory.mktemp("tiny_runs")
    common = ["--output_dir", str(root), *tiny(val_every=2, log_every=1)]
    assert main(["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", "1", *common,
                 "--vae.trainer.max_steps", "4", "--denoiser.trainer.max_steps", "4",
                 "--vae.trainer.profile", "true", "--denoiser.trainer.profile", "true"]) == 0
    assert main(["-cfg", DIGITS, "--train-denoiser", "-n", "2", *common, "--denoiser.autoencoder", "none",
                 "--denoiser.unet.in_channels", "1", "--denoiser.unet.class_bias_size", "16",
                 "--denoiser.diffusion.cache_latents", "false",
                 "--denoiser.trainer.max_steps", "2"]) == 0
    assert main(["-cfg", str(ROOT / "config" / "toy2d.json"), "--train-denoiser", "-n", "1", "--output_dir",
                 str(root), "--data.toy_num_points", "600", "--denoiser.trainer.max_steps", "2", "--denoiser.diffusion.T", "100",
                 "--denoiser.trainer.progress_bar", "false"]) == 0
    last = Path("checkpoints") / "last.ckpt"
    return {"vae": root / "digits-1" / "vae" / last, "latent": root / "digits-1" / "denoiser" / last,
            "latent_run": root / "digits-1" / "denoiser", "pixel": root / "digits-2" / "denoiser" / last,
            "toy": root / "toy2d-1" / "denoiser" / last}
