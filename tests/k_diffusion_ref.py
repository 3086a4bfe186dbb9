"""k-diffusion's samplers as a test reference, without its training stack.

The PyPI release (k-diffusion 0.1.1.post1) depends on dctorch, which pins numpy < 2, and its package `__init__`
imports scikit-image, clean-fid and CLIP. Installed with `pip install --no-deps k-diffusion==0.1.1.post1` (as
.ci/run does; torchsde and torchdiffeq, which `k_diffusion.sampling` needs, are in the [dev] extra), its
`sampling.py` and `utils.py` are loaded here under a bare package, so the suite runs on the numpy a user gets.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

INSTALL = 'pip install --no-deps "k-diffusion==0.1.1.post1"'


def k_diffusion_sampling():
    """The module `k_diffusion.sampling`; the test is skipped, saying how to install it, when it is missing."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")  # finds the folder, runs nothing
    if spec is None or spec.origin is None:
        pytest.skip(f"k-diffusion is not installed (the reference for the samplers); {INSTALL}")
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = [str(Path(spec.origin).parent)]  # sub-modules load, __init__ does not run
        sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling")
