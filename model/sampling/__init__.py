"""Sampling: noise-level grids, the registered samplers, the one loop and the spec that configures it."""
from model.sampling.grids import GRIDS, make_grid
from model.sampling.loop import renoise, run, sample, sample_ddim, sample_ddpm, sample_dpmpp_2m
from model.sampling.samplers import SAMPLERS, SamplerInfo, register
from model.sampling.spec import SamplerSpec

__all__ = ["GRIDS", "SAMPLERS", "SamplerInfo", "SamplerSpec", "make_grid", "register", "renoise", "run", "sample",
           "sample_ddim", "sample_ddpm", "sample_dpmpp_2m"]
