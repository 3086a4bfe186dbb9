"""A Stable Diffusion checkpoint (v1.x or 2.x, diffusers' folder layout) as our `Denoiser`, so our samplers run it.

    sd = StableDiffusion.from_folder("stable-diffusion-v1-5")
    x_T = sd.initial_noise(2, 512, 512, torch.Generator().manual_seed(0))
    images = sd.generate(["a red heart", "a lighthouse"], SamplerSpec("dpmpp_2m", 25, guidance=6.5), x_T)  # [-1, 1]

What is wrapped how (Rombach et al. 2022):

- the UNet (`UNet2DConditionModel`) is the network, in the scheduler's `prediction_type` (epsilon → "eps",
  v_prediction → "v");
- the schedule is built from the scheduler's betas in float64. diffusers' timestep index t has alphas_cumprod[t] =
  prod_{s <= t} (1 - betas[s]), which is our table's alpha_bar[t + 1] (our alpha_bar[0] = 1 is the data). So our
  step k is diffusers' t = k - 1, and the UNet, trained on diffusers' t, is called at our network time minus one;
- the VAE's latents z are scaled as diffusers scales them, z_norm = (z - shift_factor) * scaling_factor, which is our
  per-channel normalisation (z - shift) / scale with shift = shift_factor (0 without one) and scale =
  1 / scaling_factor;
- a prompt is CLIP's last hidden state of the prompt padded to the tokenizer's model_max_length (77), and the UNet
  cross-attends to every token, padding included (it was trained so); the unconditional branch of guidance is the
  empty prompt or a negative prompt. Guidance is ours, (1 + w) cond - w uncond: diffusers' guidance_scale = w + 1.

Everything is read from disk (`local_files_only`); nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from model import base
from model.conditioning import Condition
from model.denoising import Denoiser
from model.errors import UserError

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LAYOUT = "a diffusers Stable Diffusion folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
CONFIGS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
           "scheduler": "scheduler_config.json"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


# ----- the folder ---------------------------------------------------------------------------------------------------
def check_folder(path: Union[str, Path]) -> Path:
    """The folder, or a one-line error naming the layout and the first part it lacks."""
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise UserError(f"--model {folder} {what}; give {LAYOUT}")
    if not (folder / "model_index.json").is_file():
        raise UserError(f"--model {folder} has no model_index.json; give {LAYOUT}")
    for part in PARTS:
        if not (folder / part).is_dir():
            raise UserError(f"--model {folder} has no {part}/; give {LAYOUT}")
        config = CONFIGS.get(part)
        if config and not (folder / part / config).is_file():
            raise UserError(f"--model {folder} has no {part}/{config}; give {LAYOUT}")
    return folder


def read_config(folder: Path, part: str) -> dict:
    file = folder / part / CONFIGS[part]
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not valid JSON ({err}); give {LAYOUT}") from None


# ----- the scheduler's config → parametrisation and schedule --------------------------------------------------------
def parametrisation_of(config: dict) -> base.Parametrisation:
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise UserError(f"the scheduler's prediction_type {kind!r} is not one of {', '.join(PREDICTIONS)}")
    return PREDICTIONS[kind]


def betas_of(config: dict) -> Tensor:
    """The T betas of diffusers' beta schedules, in float64 (diffusers rounds them to float32)."""
    T = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float64)
    if kind == "scaled_linear":  # linear in sqrt(beta), as latent diffusion trained
        return torch.linspace(start**0.5, end**0.5, T, dtype=torch.float64) ** 2
    if kind == "linear":
        return torch.linspace(start, end, T, dtype=torch.float64)
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, the same betas as ours (tests/test_diffusers_parity.py)
        return base.make_schedule("cosine", T).betas
    raise UserError(f"the scheduler's beta_schedule {kind!r} is not supported; use scaled_linear, linear or "
                    f"squaredcos_cap_v2")


def schedule_of(config: dict) -> base.Schedule:
    """Our table: alpha_bar[0] = 1 and alpha_bar[k] = diffusers' alphas_cumprod[k - 1] for k = 1..T."""
    ones = torch.ones(1, dtype=torch.float64)
    alpha_bar = torch.cat([ones, torch.cumprod(1.0 - betas_of(config), dim=0)])
    if config.get("rescale_betas_zero_snr"):
        alpha_bar = base.rescale_zero_terminal_snr(alpha_bar)
    return base.Schedule(alpha_bar)


def spacing_note(config: dict) -> Optional[str]:
    """What differs from diffusers' own sampling of this folder, or None. Our "uniform" grid from pure noise at T
    is diffusers' "trailing" one shifted by one (network times T - 1, ..., ending in the data); Stable Diffusion's
    configs name no spacing, and their schedulers' default is "leading" (times 1 + j (T // n) with steps_offset 1,
    starting below T, and DDIM ending at alphas_cumprod[0] rather than the data), which no grid of ours visits."""
    spacing = config.get("timestep_spacing", "leading")
    if spacing == "trailing":
        return None
    return (f"note: the folder's scheduler spaces its steps {spacing!r}; ours are diffusers' 'trailing' times, so the "
            f"images differ from diffusers' default pipeline (set timestep_spacing='trailing' there to match)")


def latent_statistics(vae_config: dict, channels: int) -> tuple[Tensor, Tensor]:
    """(shift, scale) per channel such that (z - shift) / scale = (z - shift_factor) * scaling_factor."""
    factor = float(vae_config.get("scaling_factor", 0.18215))
    shift = float(vae_config.get("shift_factor") or 0.0)
    return torch.full((channels,), shift), torch.full((channels,), 1.0 / factor)


def check_image_size(vae_config: dict, height: int, width: int) -> int:
    """Pixels per latent along a side, 2 per downsampling block of the VAE's encoder (8 for Stable Diffusion), after
    checking that both sides are multiples of it."""
    f = 2 ** (len(vae_config.get("block_out_channels", (0,) * 4)) - 1)
    for flag, side in (("--height", height), ("--width", width)):
        if side <= 0 or side % f:
            raise UserError(f"{flag} {side} must be a positive multiple of {f} (the VAE's pixels per latent)")
    return f


# ----- the network ---------------------------------------------------------------------------------------------------
class DiffusersUNet(nn.Module):
    """diffusers' UNet2DConditionModel as our network net(x_t, t, c), t our time (B,) and c a `Condition` whose
    context is the encoded prompt."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, c: Condition) -> Tensor:
        # our step k has diffusers' alphas_cumprod[k - 1]: the UNet learned that noise level as timestep k - 1
        return self.unet(x, t - 1, encoder_hidden_states=c.context).sample


# ----- the model -----------------------------------------------------------------------------------------------------
class StableDiffusion:
    """The denoiser (UNet, schedule, parametrisation, latent scale), the VAE and the prompt encoder of one folder."""

    def __init__(self, denoiser: Denoiser, vae: nn.Module, text_encoder: nn.Module, tokenizer,
                 device: Union[str, torch.device] = "cpu", scheduler_config: Optional[dict] = None) -> None:
        self.scheduler_config = scheduler_config or {}
        self.denoiser = denoiser.eval().requires_grad_(False).to(device)
        self.vae = vae.eval().requires_grad_(False).to(device)
        self.text_encoder = text_encoder.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @classmethod
    def from_folder(cls, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> "StableDiffusion":
        folder = check_folder(path)
        scheduler = read_config(folder, "scheduler")
        parametrisation, schedule = parametrisation_of(scheduler), schedule_of(scheduler)
        unet, vae, text_encoder, tokenizer = load_parts(folder)
        channels = vae.config.latent_channels
        if unet.config.in_channels != channels:  # an inpainting UNet also reads a mask and the masked image
            raise UserError(f"{folder / 'unet'} takes {unet.config.in_channels} channels but the VAE's latents have "
                            f"{channels}; give a text-to-image Stable Diffusion folder (not an inpainting one)")
        shift, scale = latent_statistics(dict(vae.config), channels)
        denoiser = Denoiser(DiffusersUNet(unet), schedule, parametrisation, latent_shift=shift, latent_scale=scale)
        return cls(denoiser, vae, text_encoder, tokenizer, device, scheduler)

    @property
    def schedule(self) -> base.Schedule:
        return self.denoiser.schedule

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = check_image_size(dict(self.vae.config), height, width)
        return self.vae.config.latent_channels, height // f, width // f

    def initial_noise(self, n: int, height: int, width: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """x_T ~ N(0, I) of n images, drawn on the generator's device (a CPU seed gives the same noise everywhere)."""
        return base.sample_noise((n, *self.latent_shape(height, width)), generator, self.device)

    # ----- prompts ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """CLIP's last hidden state (B, L, D) of the prompts padded to model_max_length; the encoder gets a mask only
        where its config asks for one (as diffusers)."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask",
                                                                False) else None
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask).last_hidden_state

    def condition(self, prompts: Sequence[str]) -> Condition:
        """No mask in the condition: the UNet attends to the padding tokens too, as it was trained."""
        return Condition(context=self.encode_prompts(prompts))

    # ----- sampling -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z_norm: Tensor) -> Tensor:
        """Latents in the network's space → images (B, 3, H, W) in [-1, 1]."""
        return self.vae.decode(self.denoiser.denormalise(z_norm)).sample.clamp(-1.0, 1.0)

    def generate(self, prompts: Sequence[str], spec, x_T: Tensor, negative_prompt: Optional[str] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] of the prompts from x_T with a `model.sampling.SamplerSpec` (its guidance
        is our w; the unconditional branch is `negative_prompt`, else the empty prompt)."""
        if len(prompts) != len(x_T):
            raise ValueError(f"{len(prompts)} prompts for {len(x_T)} initial latents; give one prompt per latent")
        c = self.condition(prompts)
        uncond = self.condition([negative_prompt or ""] * len(prompts)) if spec.guidance != 0.0 else None
        z = self.denoiser.sample(x_T.to(self.device), c, spec, generator=generator, uncond=uncond)
        return self.decode(z)


def load_parts(folder: Path):
    """(unet, vae, text_encoder, tokenizer) from the folder's parts, from disk only; a part that does not load is
    a one-line error that names it."""
    from functools import partial

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import is_accelerate_available
    from transformers import AutoTokenizer, CLIPTextModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    # without accelerate, asking for its low-memory loading only prints a warning of several lines
    quiet = {} if is_accelerate_available() else {"low_cpu_mem_usage": False}
    loaders = {"unet": partial(UNet2DConditionModel.from_pretrained, **quiet),
               "vae": partial(AutoencoderKL.from_pretrained, **quiet),
               "text_encoder": CLIPTextModel.from_pretrained, "tokenizer": AutoTokenizer.from_pretrained}
    parts = []
    for part, load in loaders.items():
        try:
            parts.append(load(str(folder / part), local_files_only=True))
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot load {folder / part} ({reason}); give {LAYOUT}") from None
    return tuple(parts)
