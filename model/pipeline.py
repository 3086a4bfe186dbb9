"""A trained latent diffusion model, loaded for sampling and evaluation without Lightning.

    from model.pipeline import LatentDiffusionPipeline
    pipe = LatentDiffusionPipeline.from_pretrained("runs/digits-1/denoiser/checkpoints/last.ckpt")
    images = pipe(16, class_labels=[3] * 16, cfg_scale=2, sampler="dpmpp_2m", steps=20, seed=0)  # uint8 (16, H, W, C)
    images = pipe(2, prompt=["a red heart", "flag: Japan"], negative_prompt="blurry", cfg_scale=5)  # a text model

The pipeline holds the config, the `Denoiser` wrapper around the EMA network (with the schedule, parametrisation,
class conditioning and latent statistics), the frozen autoencoder and the `Conditioner` that turns labels and
prompts into the network's condition. It imports torch, the networks and
`model/base.py`; training is the only thing that needs Lightning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from model import base, objectives
from model.config import Config
from model.denoiser import denoiser_network, denoises_points, sample_shape
from model.conditioning import Conditioner
from model.denoising import Denoiser
from model.errors import UserError
from model.sampling import SamplerSpec
from model.text import prompt_encoder


def no_guide(weight: float) -> UserError:
    """The error for an autoguidance weight on a model that has no guide."""
    return UserError(f"autoguidance {weight:g} needs the guide network that training keeps with "
                     f"denoiser.diffusion.guide_fraction, and this model has none; use autoguidance 0 "
                     f"(--autoguidance 0)")


class LatentDiffusionPipeline:
    """Sample and evaluate a trained model: `denoiser` (the wrapper, EMA weights) and `autoencoder` (None in pixel
    space and for points), on `device`."""

    def __init__(self, cfg: Config, denoiser: Denoiser, autoencoder: Optional[nn.Module], device: str = "cpu",
                 source: str = "", conditioner: Optional[Conditioner] = None) -> None:
        self.cfg = cfg
        self.conditioner = conditioner or Conditioner(denoiser.num_classes)
        self.denoiser = denoiser.eval().to(device)
        self.autoencoder = autoencoder.eval().requires_grad_(False).to(device) if autoencoder is not None else None
        self.device = torch.device(device)
        self.source = source

    @property
    def points(self) -> bool:
        """Whether the model draws points (the 2-D toy) rather than images."""
        return denoises_points(self.cfg.denoiser)

    # ----- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: Union[str, Path], device: str = "cpu") -> "LatentDiffusionPipeline":
        """From a denoiser checkpoint (.ckpt, written by training) or an export folder (`model.scripts.export`)."""
        from model.cli_config import from_dict
        from model.export import checkpoint_contents, read_export

        path = Path(path)
        if path.is_dir():
            cfg, num_classes, tensors = read_export(path)
        else:
            config, num_classes, _, tensors = checkpoint_contents(path)
            cfg = from_dict(config)
        return cls.build(cfg, num_classes, tensors, device, str(path))

    @classmethod
    def build(cls, cfg: Config, num_classes: int, tensors: dict[str, dict[str, Tensor]], device: str,
              source: str) -> "LatentDiffusionPipeline":
        """From a config and the state dicts "denoiser" (the EMA network), "guide" (autoguidance's, where kept),
        "autoencoder" and "latent" (shift and scale), as both file formats give them."""
        from model.checkpoint import load_weights

        net = denoiser_network(cfg, num_classes)
        load_weights(net, tensors["denoiser"], source)
        autoencoder, shift, scale = None, None, None
        if cfg.denoiser.autoencoder == "vae":
            from model.autoencoder import BetaVAE

            autoencoder = BetaVAE(cfg.vae.net)
            load_weights(autoencoder, tensors["autoencoder"], source)
            shift, scale = tensors["latent"]["shift"], tensors["latent"]["scale"]
        guide = None
        if tensors.get("guide"):
            guide = denoiser_network(cfg, num_classes)
            load_weights(guide, tensors["guide"], source)
        else:  # saved before its guide was kept, or trained without one: the config says it has none
            cfg.denoiser.diffusion.autoguidance, cfg.denoiser.diffusion.guide_fraction = 0.0, 0.0
        objective = objectives.from_config(cfg.denoiser.diffusion)
        denoiser = Denoiser(net, objective.table, cfg.denoiser.diffusion.parametrisation, num_classes, shift, scale,
                            objective=objective, guide=guide)
        return cls(cfg, denoiser, autoencoder, device, source,
                   Conditioner(num_classes, prompt_encoder(cfg.denoiser.text, device)))

    # ----- what the scripts read -------------------------------------------------------------------------------
    @property
    def diff(self):
        """The diffusion settings the model was trained with (T, schedule, parametrisation, sampler defaults)."""
        return self.cfg.denoiser.diffusion

    @property
    def schedule(self) -> base.Schedule:
        return self.denoiser.schedule

    @property
    def num_classes(self) -> int:
        return self.denoiser.num_classes

    @property
    def null_class(self) -> int:
        return self.denoiser.null_class

    @property
    def net(self) -> nn.Module:
        """The EMA network."""
        return self.denoiser.net

    @property
    def prompted(self) -> bool:
        """Whether the model was trained on prompts."""
        return self.conditioner.prompted

    def condition(self, y: Optional[Tensor], prompts: Optional[Sequence[str]] = None, n: Optional[int] = None):
        """Data labels (-1: unlabelled → the null class) and prompts (None: the empty prompt) → the network's
        condition, on the pipeline's device; None when unconditional."""
        n = n if n is not None else (len(y) if y is not None else len(prompts or []))
        return self.conditioner(y, prompts, n, device=self.device)

    def check_guidance(self, cfg_scale: float) -> None:
        """Refuses guidance on an unconditional model (before a command writes anything)."""
        if cfg_scale != 0 and not self.conditioner.conditional:
            raise UserError("--cfg-scale needs a conditional model (classes or prompts), but this one is "
                            "unconditional; drop --cfg-scale")

    def check_prompts(self, prompts: Optional[Sequence[str]], negative: Optional[Sequence[str]], n: int) -> None:
        """Refuses prompts for a model without them, and a count that does not match the samples."""
        if (prompts is not None or negative) and not self.prompted:
            raise UserError("prompts need a model trained on prompts (denoiser.text), but this one was not; "
                            "drop --prompt/--negative-prompt or use --class")
        if prompts is not None and len(prompts) != n:
            raise UserError(f"{len(prompts)} prompts for {n} samples; give one prompt per sample")
        if negative and len(negative) not in (1, n):
            raise UserError(f"{len(negative)} negative prompts for {n} samples; give one, or one per sample")

    # ----- latents ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] → normalised latents (the posterior mean); pixels and points pass unchanged."""
        x = x.to(self.device)
        if self.autoencoder is None:
            return x
        return self.denoiser.normalise(self.autoencoder.encode(x)[0])

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Normalised latents → images in [-1, 1]; pixels and points pass unchanged."""
        z = z.to(self.device)
        if self.autoencoder is None:
            return z
        return self.autoencoder.decode(self.denoiser.denormalise(z)).clamp(-1, 1)

    # ----- sampling --------------------------------------------------------------------------------------------
    def spec(self, spec: Optional[SamplerSpec] = None, **overrides) -> SamplerSpec:
        """The sampling spec: `spec`, else the checkpoint's defaults (sampler, sample_steps, sample_spacing,
        clip_limit, autoguidance), with the keyword overrides that are not None (sampler, steps, spacing, eta,
        cfg_scale, guidance_interval, clip_limit, autoguidance); autoguidance without a guide is refused."""
        if "cfg_scale" in overrides:
            overrides["guidance"] = overrides.pop("cfg_scale")
        spec = spec.replace(**overrides) if spec is not None else SamplerSpec.from_config(self.diff, **overrides)
        if spec.autoguidance and self.denoiser.guide is None:
            raise no_guide(spec.autoguidance)
        return spec

    @torch.no_grad()
    def sample(self, n: int, labels: Optional[Tensor] = None, spec: Optional[SamplerSpec] = None, *,
               generator: Optional[torch.Generator] = None, x_T: Optional[Tensor] = None,
               t_start: Optional[int] = None, callback=None, prompts: Optional[Sequence[str]] = None,
               negative_prompts: Optional[Sequence[str]] = None, **overrides) -> Tensor:
        """n samples in the denoiser's space (normalised latents, pixels or points); `decode` them to images.

        labels None: the null class; prompts None: the empty prompt; negative_prompts (one, or one per sample)
        replace the empty prompt in guidance's unconditional branch. `spec` (or the checkpoint's, with `overrides`:
        see `spec`) says how. The generator draws x_T (on the CPU, so a seed gives the same samples on any device)
        and the stochastic samplers' noise; x_T at the table's step t_start starts part-way (reimagine)."""
        spec = self.spec(spec, **overrides)
        if x_T is None:
            x_T = torch.randn(sample_shape(self.cfg, n), generator=generator)
        c = self.condition(labels, prompts, n)
        uncond = self.conditioner.unconditional(n, negative_prompts, self.device)
        return self.denoiser.sample(x_T.to(self.device), c, spec, generator=generator, k_start=t_start,
                                    callback=callback, uncond=uncond)

    @torch.no_grad()
    def batches(self, n: int, labels: Optional[Tensor] = None, spec: Optional[SamplerSpec] = None, *, seed: int = 0,
                batch_size: int = 256, callback=None, prompts: Optional[Sequence[str]] = None,
                negative_prompts: Optional[Sequence[str]] = None, **overrides):
        """Yield (images in [-1, 1] or the toy's points, samples in the denoiser's space), both on the CPU, for n
        samples drawn `batch_size` at a time from one generator seeded with `seed`: memory stays bounded for any n,
        and the same seed and batch size give the same samples on a CPU. `callback` follows the first batch."""
        if n <= 0:
            raise UserError(f"the number of samples must be > 0, got {n}")
        if batch_size <= 0:
            raise UserError(f"the batch size must be > 0, got {batch_size}")
        if labels is not None and len(labels) != n:
            raise UserError(f"{len(labels)} class labels for {n} samples; give one label per sample")
        self.check_prompts(prompts, negative_prompts, n)
        spec = self.spec(spec, **overrides)
        gen = torch.Generator().manual_seed(seed)
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            chunk = labels[rows] if labels is not None else None
            texts = prompts[rows] if prompts is not None else None
            negative = negative_prompts[rows] if negative_prompts and len(negative_prompts) > 1 else negative_prompts
            z = self.sample(min(batch_size, n - start), chunk, spec, generator=gen, prompts=texts,
                            negative_prompts=negative, callback=callback if start == 0 else None)
            yield self.decode(z).cpu(), z.cpu()

    def generate(self, n: int, labels: Optional[Tensor] = None, spec: Optional[SamplerSpec] = None,
                 **kwargs) -> tuple[Tensor, Tensor]:
        """All of `batches` at once: (images or points, samples in the denoiser's space), on the CPU."""
        images, latents = zip(*self.batches(n, labels, spec, **kwargs))
        return torch.cat(images), torch.cat(latents)

    def __call__(self, n: Optional[int] = None, class_labels: Optional[Union[Sequence[int], Tensor]] = None, *,
                 prompt: Optional[Union[str, Sequence[str]]] = None,
                 negative_prompt: Optional[Union[str, Sequence[str]]] = None,
                 spec: Optional[SamplerSpec] = None, seed: int = 0, batch_size: int = 256,
                 return_latents: bool = False, **overrides) -> Union[np.ndarray, tuple[np.ndarray, Tensor]]:
        """n images as uint8 (n, H, W, C) (the 2-D toy: float points (n, 2)); with return_latents, also the samples
        in the denoiser's space. A text model takes `prompt` (one per image; n defaults to their number, one prompt
        serves all n) and `negative_prompt`. Sampled as the checkpoint's config says unless `spec` or overrides
        (cfg_scale, sampler, steps, spacing, eta, clip_limit, guidance_interval) say otherwise. See `generate`."""
        from model.images import to_uint8

        prompts = [prompt] if isinstance(prompt, str) else (None if prompt is None else list(prompt))
        negative = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
        n = n if n is not None else (len(prompts) if prompts else 1)
        if prompts is not None and len(prompts) == 1:
            prompts = prompts * n
        labels = None if class_labels is None else torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        x, z = self.generate(n, labels, spec, seed=seed, batch_size=batch_size, prompts=prompts,
                             negative_prompts=negative, **overrides)
        out = x.numpy() if self.points else to_uint8(x)
        return (out, z) if return_latents else out
