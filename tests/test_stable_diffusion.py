"""Stable Diffusion's weights through our samplers, against diffusers' own `StableDiffusionPipeline`.

The folder is made here, tiny and randomly initialised (nothing downloaded): a UNet2DConditionModel with two levels,
an AutoencoderKL with two blocks (2 pixels per latent; SD's has 8), a 2-layer CLIP text model with its tokenizer
(`tests/tiny_text.py`, 16 tokens) and SD's scaled_linear schedule on T = 1000, saved by the pipeline's own
save_pretrained. The scheduler spaces its steps "trailing", the grid our "uniform" spacing visits (diffusers'
timestep t is our step t + 1); SD's shipped "leading" spacing has no counterpart among our grids (asserted below).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import base
from model.denoising import Denoiser
from model.sampling import SamplerSpec, make_grid
from model.scripts import text2img
from model import stable_diffusion as sdm
from tiny_text import tiny_clip
from wrap import swapped

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py

SIZE = 32  # pixels; 16 latents with the tiny VAE
STEPS = 10  # divides T, as diffusers' DDIM needs (it steps back by T // steps)
PROMPTS = ["a red square", "a blue circle"]
NEGATIVE = "blurry"
W = 3.0  # ours; diffusers' guidance_scale = W + 1
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, steps_offset=1)


def tiny_sd_folder(root: Path, prediction_type: str) -> Path:
    """A Stable Diffusion folder of tiny random parts in diffusers' layout."""
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    clip = tiny_clip(root / "clip", width=32, max_length=16)
    unet = diffusers.UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=SIZE)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel.from_pretrained(clip), tokenizer=CLIPTokenizer.from_pretrained(clip),
        unet=unet, scheduler=diffusers.DDIMScheduler(**SCHEDULER, prediction_type=prediction_type),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return root / "sd"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd")
    return {"eps": tiny_sd_folder(root / "eps", "epsilon"), "v": tiny_sd_folder(root / "v", "v_prediction")}


# ----- diffusers' side ---------------------------------------------------------------------------------------------
def their_scheduler(name: str, config):
    """diffusers' scheduler of our sampler `name` on the folder's config: first order at the first step and into the
    data (final sigma 0), no thresholding, no Karras sigmas."""
    if name == "ddim":
        return diffusers.DDIMScheduler.from_config(config)
    if name == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
            euler_at_final=False, final_sigmas_type="zero", use_karras_sigmas=False)
    if name == "unipc":
        return diffusers.UniPCMultistepScheduler.from_config(
            config, solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, disable_corrector=[],
            final_sigmas_type="zero", use_karras_sigmas=False)
    return diffusers.EulerDiscreteScheduler.from_config(config, final_sigmas_type="zero", use_karras_sigmas=False)


def their_pipe(folder: Path, sampler: str):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.scheduler = their_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def start_scale(scheduler) -> float:
    """What diffusers' latents must be for its start to be our x_T: it multiplies them by init_noise_sigma. That is 1
    for DDIM, DPM-Solver and UniPC; Euler works on x / alpha, whose start is sqrt(1 + σ_max²) x_T, but with trailing
    spacing its init_noise_sigma is σ_max (0.2% less for SD's schedule)."""
    if scheduler.init_noise_sigma == 1.0:
        return 1.0
    sigma = float(scheduler.sigmas.max())
    return math.sqrt(1.0 + sigma**2) / float(scheduler.init_noise_sigma)


def run_theirs(folder: Path, sampler: str, x_T: torch.Tensor, w: float = W, negative=NEGATIVE):
    """diffusers' images (B, 3, H, W) in [0, 1] and its latents after every step."""
    pipe, states = their_pipe(folder, sampler), []
    pipe.scheduler.set_timesteps(STEPS)

    def keep(_pipe, i, t, kwargs):
        states.append(kwargs["latents"].clone())
        return kwargs

    images = pipe(PROMPTS, negative_prompt=[negative] * len(PROMPTS) if negative else None, height=SIZE,
                  width=SIZE, num_inference_steps=STEPS, guidance_scale=w + 1.0,
                  latents=x_T * start_scale(pipe.scheduler), output_type="pt", callback_on_step_end=keep).images
    return images, states, pipe.scheduler


def run_ours(sd, sampler: str, x_T: torch.Tensor, w: float = W, negative=NEGATIVE):
    """Our images in [-1, 1] and (level, state) after every step."""
    spec, states = SamplerSpec(sampler, STEPS, guidance=w), []
    c, uncond = sd.condition(PROMPTS), sd.condition([negative or ""] * len(PROMPTS))
    z = sd.denoiser.sample(x_T, c, spec, uncond=uncond, callback=lambda i, lv, x, x0: states.append((lv, x)))
    return sd.decode(z), states


def noise(sd, seed: int = 0) -> torch.Tensor:
    return sd.initial_noise(len(PROMPTS), SIZE, SIZE, torch.Generator().manual_seed(seed))


def in_vp_view(scheduler, state: torch.Tensor, level: base.Level) -> torch.Tensor:
    """diffusers' Euler state is x / alpha = sqrt(1 + σ²) x; the others' is x itself."""
    if isinstance(scheduler, diffusers.EulerDiscreteScheduler):
        return state / math.sqrt(1.0 + level.sigma_ve**2)
    return state


# ----- the parts ---------------------------------------------------------------------------------------------------
def test_scaled_linear_schedule_is_diffusers_shifted_by_one():
    config = {**SCHEDULER, "prediction_type": "epsilon"}
    ours, theirs = sdm.schedule_of(config), diffusers.DDIMScheduler(**config)
    assert ours.T == 1000 and ours.alpha_bar[0].item() == 1.0
    # diffusers' alphas_cumprod[t] is our alpha_bar[t + 1]; it is float32, ours float64
    torch.testing.assert_close(ours.alpha_bar[1:], theirs.alphas_cumprod.double(), rtol=1e-5, atol=0)
    shifted = (ours.alpha_bar[:-1] / theirs.alphas_cumprod.double() - 1).abs().max().item()
    assert shifted > 1e-4  # a wrong shift would be seen


def test_parametrisation_and_latent_scale_from_the_configs():
    assert sdm.parametrisation_of({"prediction_type": "epsilon"}) == "eps"
    assert sdm.parametrisation_of({"prediction_type": "v_prediction"}) == "v"
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    for config, expected in (({"scaling_factor": 0.18215}, z * 0.18215),  # SD 1.x / 2.x
                             ({"scaling_factor": 1.5305, "shift_factor": 0.0609}, (z - 0.0609) * 1.5305)):  # SD3's
        shift, scale = sdm.latent_statistics(config, 4)
        den = Denoiser(lambda x, t, c: x, sdm.schedule_of(SCHEDULER), "eps", latent_shift=shift, latent_scale=scale)
        torch.testing.assert_close(den.normalise(z), expected)
        torch.testing.assert_close(den.denormalise(den.normalise(z)), z)


def test_trailing_spacing_is_our_uniform_grid_and_leading_is_none_of_ours():
    schedule = sdm.schedule_of(SCHEDULER)
    ours = [level.net_time for level in make_grid(schedule, "uniform", 25)[:-1]]  # our steps k, then the data
    trailing = diffusers.DDIMScheduler(**SCHEDULER)
    trailing.set_timesteps(25)
    assert [t + 1 for t in trailing.timesteps.tolist()] == ours  # 1000, 960, ..., 40
    # SD's shipped configs: leading spacing with steps_offset 1, i.e. our steps 962, 922, ..., 2 from pure noise
    leading = diffusers.DDIMScheduler(**{**SCHEDULER, "timestep_spacing": "leading"})
    leading.set_timesteps(25)
    theirs = [t + 1 for t in leading.timesteps.tolist()]
    assert theirs[0] == 962 and theirs[-1] == 2
    for spacing in ("uniform", "noise-dense", "karras", "logsnr"):
        assert [lv.net_time for lv in make_grid(schedule, spacing, 25)[:-1]] != theirs
    assert sdm.spacing_note(SCHEDULER) is None
    assert "trailing" in sdm.spacing_note({k: v for k, v in SCHEDULER.items() if k != "timestep_spacing"})


# ----- parity with diffusers' pipeline ------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc", "euler"])
def test_images_equal_diffusers_pipeline(folders, prediction, sampler):
    # Same folder, prompts, negative prompt, guidance (g = w + 1) and initial latents; the same grid of times
    # (asserted). Measured: images <= 1.1e-6 apart in [0, 1], states <= 9.1e-7 of their largest value (float32).
    sd = sdm.StableDiffusion.from_folder(folders[prediction])
    assert sd.denoiser.objective.parametrisation == prediction
    x_T = noise(sd)
    ours, our_states = run_ours(sd, sampler, x_T)
    theirs, their_states, scheduler = run_theirs(folders[prediction], sampler, x_T)
    ours_levels = [lv.net_time for lv in make_grid(sd.schedule, "uniform", STEPS)[:-1]]
    assert [t + 1 for t in scheduler.timesteps.tolist()] == ours_levels
    assert len(our_states) == len(their_states) == STEPS
    for (level, a), b in zip(our_states, their_states):
        b = in_vp_view(scheduler, b, level)
        assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item(), level
    assert ours.shape == theirs.shape == (len(PROMPTS), 3, SIZE, SIZE)
    assert ((ours + 1) / 2 - theirs).abs().max().item() < 1e-5
    assert theirs.std().item() > 0.05  # not a flat image


def test_parity_would_see_a_time_off_by_one_and_the_prompts(folders):
    # The tolerance above is far below what a wrong time mapping, a dropped prompt or dropped guidance change.
    sd = sdm.StableDiffusion.from_folder(folders["eps"])
    x_T = noise(sd)
    images, _ = run_ours(sd, "dpmpp_2m", x_T)
    net = sd.denoiser.net
    shifted = Denoiser(lambda x, t, c: net(x, t + 1, c), sd.schedule, "eps", latent_shift=sd.denoiser.latent_shift,
                       latent_scale=sd.denoiser.latent_scale)
    with swapped(sd, "denoiser", shifted):
        off_by_one, _ = run_ours(sd, "dpmpp_2m", x_T)
    unguided, _ = run_ours(sd, "dpmpp_2m", x_T, w=0.0)
    plain_uncond, _ = run_ours(sd, "dpmpp_2m", x_T, negative=None)
    for other in (off_by_one, unguided, plain_uncond):
        assert (images - other).abs().max().item() > 1e-3


def test_text2img_command_writes_diffusers_images(folders, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", str(folders["v"]), *sum((["--prompt", p] for p in PROMPTS), []), "--negative-prompt",
            NEGATIVE, "--sampler", "dpmpp_2m", "--steps", str(STEPS), "--cfg-scale", str(W), "--seed", "3",
            "--height", str(SIZE), "--width", str(SIZE), "--batch-size", "1", "--output", str(out)]
    assert text2img.main(argv) == 0
    saved = np.load(out / "samples.npz")
    assert saved["prompts"].tolist() == PROMPTS and saved["guidance"].tolist() == [W, W]
    sd = sdm.StableDiffusion.from_folder(folders["v"])
    theirs, _, _ = run_theirs(folders["v"], "dpmpp_2m", noise(sd, seed=3))
    theirs = (theirs * 255).round().permute(0, 2, 3, 1).numpy()  # (B, H, W, 3) as the PNGs hold them
    assert np.abs(saved["images"].astype(np.float64) - theirs).max() <= 1  # rounding of values 1e-6 apart
    png = np.asarray(Image.open(out / "sample_0001.png"))
    assert np.array_equal(png, saved["images"][1])


# ----- the command ---------------------------------------------------------------------------------------------------
def test_cfg_sweep_grid_has_a_column_per_scale(folders, tmp_path):
    common = ["--model", str(folders["eps"]), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "3",
              "--height", str(SIZE), "--width", str(SIZE), "--seed", "1"]
    scales = [0.0, 2.0, 4.5]
    assert text2img.main([*common, "--cfg-sweep", *map(str, scales), "--output", str(tmp_path / "sweep")]) == 0
    assert text2img.main([*common, "--cfg-scale", "0", "--output", str(tmp_path / "single")]) == 0
    sweep, single = np.load(tmp_path / "sweep" / "samples.npz"), np.load(tmp_path / "single" / "samples.npz")
    images = sweep["images"]  # (rows * columns, H, W, 3), row-major
    assert images.shape == (len(PROMPTS) * len(scales), SIZE, SIZE, 3)
    assert sweep["guidance"].tolist() == scales * len(PROMPTS)
    assert np.array_equal(images[:: len(scales)], single["images"])  # the column at w = 0 is the single run
    assert np.abs(images[1::3].astype(int) - images[::3]).max() > 10  # guidance changed the other columns
    # the grid: a row per prompt, a column per scale, the scales in the row labels, cells enlarged to 64 px
    from model.images import grid_array

    grid = np.asarray(Image.open(tmp_path / "sweep" / "grid.png"))
    zoom, pad = 2, 2
    width = zoom * (len(scales) * (SIZE + pad) + pad)
    assert grid.shape[0] == zoom * (len(PROMPTS) * (SIZE + pad) + pad)
    expected = grid_array(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, nrow=len(scales))
    assert np.array_equal(grid[:, -width:], expected.repeat(zoom, axis=0).repeat(zoom, axis=1))
    assert grid.shape[1] > width  # the labels' margin on the left
    names = sorted(p.name for p in (tmp_path / "sweep").glob("sample_*.png"))
    assert names[:3] == ["sample_0000_w0.png", "sample_0000_w2.png", "sample_0000_w4.5.png"]


@pytest.mark.parametrize("missing", [None, "unet"])
def test_missing_folder_or_part_is_one_line(folders, tmp_path, capsys, missing):
    if missing is None:
        model, needle = tmp_path / "nowhere", "does not exist"
    else:
        model, needle = tmp_path / "partial", f"has no {missing}/"
        shutil.copytree(folders["eps"], model)
        shutil.rmtree(model / missing)
    capsys.readouterr()
    assert text2img.main(["--model", str(model), "--prompt", "a", "--output", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert needle in lines[0]
    assert "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/" in lines[0]
    assert not (tmp_path / "out").exists()
