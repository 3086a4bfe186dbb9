"""A network as the samplers see it, for tests that drive `model.base` loops with oracles and toy networks, and a
swap of a module's attribute that puts the old one back."""
from __future__ import annotations

import contextlib

from model.denoising import Denoiser


def denoise_fn(net, schedule, parametrisation="v", c=None, clip_limit=None):
    """`denoise(x_t, t) -> (x0, eps)` of a raw network (x_t, t, c) -> output in `parametrisation`."""
    return Denoiser(net, schedule, parametrisation).bind(c, clip_limit=clip_limit)


@contextlib.contextmanager
def swapped(obj, name: str, value):
    """`obj.name = value` for the `with` block, then the old value back, through the object's own `__setattr__`.

    pytest's `monkeypatch.setattr` reads the old value from the instance `__dict__` (pytest >= 9.2), where an
    `nn.Module` keeps none of its children, parameters or buffers: its undo deletes a swapped-out child instead of
    restoring it. Swap module attributes with this instead."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield value
    finally:
        setattr(obj, name, old)
