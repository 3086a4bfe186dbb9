"""A network as the samplers see it, for tests that drive `model.base` loops with oracles and toy networks."""
from __future__ import annotations

from model.denoising import Denoiser


def denoise_fn(net, schedule, parametrisation="v", c=None, clip_limit=None):
    """`denoise(x_t, t) -> (x0, eps)` of a raw network (x_t, t, c) -> output in `parametrisation`."""
    return Denoiser(net, schedule, parametrisation).bind(c, clip_limit=clip_limit)
