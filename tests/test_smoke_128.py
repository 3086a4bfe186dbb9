"""The 128-px path of the FFHQ configs, end to end on CPU: both stages and sampling on a folder of 128×128 images,
with the configs' shapes (f = 8, 8 latent channels, attention, the VAE's patch discriminator, bf16 swapped for
float32) at tiny widths."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.main import main
from model.pipeline import LatentDiffusionPipeline
from model.scripts.sample import main as sample_main
from tiny import ROOT

COMMON = ["--data.num_workers", "0", "--data.batch_size", "4", "--data.max_items", "24"]


def stage_args(stage: str) -> list[str]:
    return [f"--{stage}.trainer.max_steps", "2", f"--{stage}.trainer.precision", "32",
            f"--{stage}.trainer.val_every_n_steps", "2", f"--{stage}.trainer.limit_val_batches", "1",
            f"--{stage}.trainer.images_every_n_steps", "2", f"--{stage}.trainer.progress_bar", "false"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """24 smooth random 128×128 RGB images: enough for a batch of 4 and a validation split."""
    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(24):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((128, 128), Image.BICUBIC).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.slow
def test_the_ffhq_configs_train_both_stages_and_sample_at_128_px(faces, tmp_path):
    out = ["--output_dir", str(tmp_path), "--data.root", str(faces), *COMMON]
    assert main(["-cfg", str(ROOT / "config" / "ffhq-beta-vae.json"), "--train-vae", "-n", "1", *out,
                 "--vae.net.base_channels", "8", "--vae.net.norm_groups", "4", "--vae.disc.base_channels", "8",
                 "--vae.disc.start_step", "1", *stage_args("vae")]) == 0  # the discriminator acts at step 2
    vae = tmp_path / "ffhq-beta-vae-1" / "vae" / "checkpoints" / "last.ckpt"
    assert main(["-cfg", str(ROOT / "config" / "ffhq-denoiser.json"), "--train-denoiser", "-n", "1", *out,
                 "--load-vae", str(vae), "--denoiser.unet.base_channels", "16", "--denoiser.unet.num_heads", "2",
                 "--denoiser.diffusion.latent_stats_batches", "2", *stage_args("denoiser")]) == 0
    ckpt = tmp_path / "ffhq-denoiser-1" / "denoiser" / "checkpoints" / "last.ckpt"
    pipe = LatentDiffusionPipeline.from_pretrained(ckpt)
    assert pipe.cfg.vae.net.downsample_factor == 8 and pipe.denoiser.latent_shift.shape == (8,)
    images, latents = pipe(2, sampler="ddim", steps=2, return_latents=True)
    assert images.shape == (2, 128, 128, 3) and latents.shape == (2, 8, 16, 16)
    assert sample_main(["--load", str(ckpt), "--ddim", "--steps", "2", "--num_samples", "2",
                        "--output", str(tmp_path / "samples")]) == 0
    assert np.load(tmp_path / "samples" / "samples.npz")["images"].shape == (2, 128, 128, 3)
    assert (tmp_path / "ffhq-denoiser-1" / "denoiser" / "images" / "step0000002.png").is_file()
