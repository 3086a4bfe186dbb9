"""Sampling: noise-level grids, the registered samplers, the one loop and the spec that configures it."""
from model.sampling.grids import GRIDS, make_grid
from model.sampling.loop import renoise, run, sample, sample_ddim, sample_ddpm, sample_dpmpp_2m
from model.sampling.samplers import SAMPLERS, SamplerInfo, register
from model.sampling.spec import AUTOGUIDANCE_RULE, NOISE_SCALE_RULE, SamplerSpec, autoguidance_ok, noise_scale_ok

__all__ = ["AUTOGUIDANCE_RULE", "GRIDS", "NOISE_SCALE_RULE", "SAMPLERS", "SamplerInfo", "SamplerSpec",
           "autoguidance_ok", "make_grid", "noise_scale_ok", "register", "renoise", "run", "sample", "sample_ddim",
           "sample_ddpm", "sample_dpmpp_2m"]
