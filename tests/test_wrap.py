"""The test helpers' own guarantees: a swapped module attribute comes back whole."""
from __future__ import annotations

import pytest
from torch import nn

from wrap import swapped


def test_swapped_puts_a_child_module_back_as_a_child():
    outer = nn.Sequential()
    outer.net = nn.Linear(2, 2)
    original = outer.net
    with swapped(outer, "net", nn.Identity()) as spy:
        assert outer.net is spy
    assert outer.net is original and outer._modules["net"] is original
    assert sum(1 for _ in outer.parameters()) == 2  # weight and bias are the model's again


def test_swapped_restores_on_error_too():
    outer = nn.Module()
    outer.net = nn.Linear(2, 2)
    original = outer.net
    with pytest.raises(RuntimeError), swapped(outer, "net", nn.Identity()):
        raise RuntimeError("inside the block")
    assert outer.net is original


def test_monkeypatching_a_module_instance_is_refused(monkeypatch):
    with pytest.raises(TypeError, match="swapped"):
        monkeypatch.setattr(nn.Linear(2, 2), "weight", None)
    monkeypatch.setattr(nn.Linear, "extra_repr", lambda self: "patched")  # a class keeps its attributes in __dict__
    assert nn.Linear(2, 2).extra_repr() == "patched"
