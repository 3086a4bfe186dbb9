"""`SamplerSpec`: everything that decides how a trained model is sampled, built once and passed down whole.

Its defaults live here and in the checkpoint's config (`denoiser.diffusion`: sampler, sample_steps,
sample_spacing, clip_limit, guidance_interval, guidance_rescale, s_noise, autoguidance);
`SamplerSpec.from_config(diffusion, **overrides)` is how the commands, the pipeline and training build one, overrides
(command-line flags, pipeline arguments) winning where given.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from model.errors import UserError
from model.sampling.grids import GRIDS
from model.sampling.samplers import SAMPLERS


NOISE_SCALE_RULE = "a finite number > 0 (1 = the sampler's own noise)"


def noise_scale_ok(s_noise: float) -> bool:
    """Whether `s_noise` is a noise scale the stochastic samplers take (NOISE_SCALE_RULE)."""
    return math.isfinite(s_noise) and s_noise > 0


AUTOGUIDANCE_RULE = "a finite number >= 0 (0 = off)"


def autoguidance_ok(weight: float) -> bool:
    """Whether `weight` is an autoguidance weight (AUTOGUIDANCE_RULE)."""
    return math.isfinite(weight) and weight >= 0


@dataclass(frozen=True)
class SamplerSpec:
    sampler: str = "ddim"  # a name of model.sampling.SAMPLERS
    steps: Optional[int] = None  # intervals of the grid; None: every step of the table (DDPM's default)
    spacing: str = "uniform"  # a name of model.sampling.GRIDS
    eta: float = 0.0  # DDIM's noise (0 deterministic, 1 DDPM-like); the other samplers ignore it
    s_noise: float = 1.0  # scale of the stochastic samplers' fresh noise (Karras et al. 2022, S_noise); 1: none
    guidance: float = 0.0  # classifier-free guidance scale w: (1 + w) out(x, c) - w out(x, ∅)
    autoguidance: float = 0.0  # a: guide + (1 + a)(out - guide), the guide an early EMA (Karras et al. 2024); 0: off
    guidance_interval: Optional[tuple[float, float]] = None  # guide only for σ in (lo, hi] (Kynkäänniemi et al. 2024)
    guidance_rescale: float = 0.0  # CFG rescale φ in [0, 1] (Lin et al. 2024, eq. 16); 0: plain guidance
    clip_limit: Optional[float] = None  # clamp of the predicted x0 in the network's space; None or inf: none

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.spacing not in GRIDS:
            raise UserError(f"unknown timestep spacing {self.spacing!r}; choose one of {', '.join(GRIDS)}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise UserError(f"sampling steps must be an integer >= 1, got {self.steps!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise UserError(f"DDIM eta must be in [0, 1] (0 = deterministic, 1 = DDPM-like), got {self.eta}")
        if not noise_scale_ok(self.s_noise):
            raise UserError(f"the noise scale s_noise must be {NOISE_SCALE_RULE}, got {self.s_noise}")
        if not autoguidance_ok(self.autoguidance):
            raise UserError(f"the autoguidance weight must be {AUTOGUIDANCE_RULE}, got {self.autoguidance}")
        if not math.isfinite(self.guidance):
            raise UserError(f"the guidance scale must be a finite number, got {self.guidance}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise UserError(f"the guidance rescale φ must be in [0, 1] (0 = plain guidance), "
                            f"got {self.guidance_rescale}")
        if self.clip_limit is not None and not self.clip_limit > 0:
            raise UserError(f"clip_limit must be > 0 or None (no clipping), got {self.clip_limit}")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not 0.0 <= lo < hi:
                raise UserError(f"the guidance interval must be two noise levels 0 <= lo < hi, got {lo} and {hi}")
            object.__setattr__(self, "guidance_interval", (float(lo), float(hi)))

    @property
    def info(self):
        return SAMPLERS[self.sampler]

    def options(self) -> dict:
        """The keyword arguments of the sampler's step (those of its `options`)."""
        return {name: getattr(self, name) for name in self.info.options}

    def guides_at(self, sigma_ve: float) -> float:
        """The guidance scale at noise level σ: w inside the guidance interval (or everywhere without one), else 0."""
        if self.guidance_interval is None:
            return self.guidance
        lo, hi = self.guidance_interval
        return self.guidance if lo < sigma_ve <= hi else 0.0

    def replace(self, **overrides) -> "SamplerSpec":
        """This spec with the overrides that are not None."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given)

    def replace_steps(self, steps: Optional[int]) -> "SamplerSpec":
        """This spec with `steps`, None included (every step of the table)."""
        return dataclasses.replace(self, steps=steps)

    @classmethod
    def from_config(cls, diffusion, **overrides) -> "SamplerSpec":
        """The checkpoint's defaults (`denoiser.diffusion`), with the overrides that are not None."""
        given = {k: v for k, v in overrides.items() if v is not None}
        sampler = given.pop("sampler", diffusion.sampler)
        default_steps = None if SAMPLERS.get(sampler, SAMPLERS["ddim"]).every_step_by_default else diffusion.sample_steps
        interval = getattr(diffusion, "guidance_interval", None)
        return cls(sampler=sampler, steps=given.pop("steps", default_steps),
                   spacing=given.pop("spacing", diffusion.sample_spacing),
                   clip_limit=given.pop("clip_limit", diffusion.clip_limit),
                   guidance_interval=given.pop("guidance_interval", tuple(interval) if interval else None),
                   guidance_rescale=given.pop("guidance_rescale", getattr(diffusion, "guidance_rescale", 0.0)),
                   s_noise=given.pop("s_noise", getattr(diffusion, "s_noise", 1.0)),  # configs before it: 1
                   autoguidance=given.pop("autoguidance", getattr(diffusion, "autoguidance", 0.0)),  # before: 0
                   **given)

    def step_count(self, T: Optional[int]) -> Optional[int]:
        """The intervals the grid has: `steps`, else every step of a T-step table."""
        return self.steps if self.steps is not None else T

    def describe(self, T: Optional[int] = None) -> str:
        """e.g. "DDIM 25 steps, noise-dense (eta 0)", "DPM-Solver++(2M) 10 steps", "DDPM 1000 steps", and the noise
        scale where a stochastic sampler's is not 1, the autoguidance weight where on and the guidance interval where
        set: "DPM-Solver++(2M) SDE 10 steps (s_noise 1.1, autoguidance 0.3, guidance for σ in (3, inf])"."""
        steps = self.step_count(T)
        text = f"{self.info.display} {steps} steps" + ("" if self.spacing == "uniform" else f", {self.spacing}")
        said = [f"eta {self.eta:g}"] if "eta" in self.info.options else []
        if "s_noise" in self.info.options and self.s_noise != 1.0:
            said.append(f"s_noise {self.s_noise:g}")
        if self.autoguidance:
            said.append(f"autoguidance {self.autoguidance:g}")
        if self.guidance_interval is not None:
            said.append("guidance for σ in ({:g}, {:g}]".format(*self.guidance_interval))
        return text + (f" ({', '.join(said)})" if said else "")
