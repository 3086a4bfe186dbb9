"""A tiny but real set-up shared by the tests that train through the CLI: 16x16 digits, narrow networks."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "config" / "digits.json")


def digits_latent_shape(image_size: int) -> list[int]:
    """[C, h, w] of config/digits.json's VAE latents for images of `image_size`."""
    from model.autoencoder.config import VAEConfig

    net = VAEConfig(**json.loads(Path(DIGITS).read_text())["vae"]["net"])
    side = image_size // net.downsample_factor
    return [net.latent_channels, side, side]


def tiny(val_every: int, log_every: int = 20) -> list[str]:
    """Overrides for config/digits.json: 120 images, batch 16, 8- and 16-wide networks, no grids or bars, vp."""
    args = ["--data.image_size", "16", "--data.max_items", "120", "--data.batch_size", "16",
            "--vae.trainer.batch_size", "16", "--denoiser.trainer.batch_size", "16",
            "--vae.net.base_channels", "8", "--denoiser.unet.base_channels", "16",
            "--denoiser.unet.channel_mult", "[1, 2]", "--denoiser.diffusion.latent_stats_batches", "2",
            "--denoiser.trainer.fid_every_n_steps", "0",
            "--denoiser.diffusion.objective", "vp",  # the package default, whose closed forms the tests check
            "--denoiser.diffusion.flow_logit_mean", "0"]  # the flow objective's, which vp refuses
    for stage in ("vae", "denoiser"):
        args += [f"--{stage}.trainer.val_every_n_steps", str(val_every),
                 f"--{stage}.trainer.images_every_n_steps", "0", f"--{stage}.trainer.progress_bar", "false",
                 f"--{stage}.trainer.log_every_n_steps", str(log_every)]
    return args


def load_system(path):
    """The DenoiserSystem of a training checkpoint, weights and buffers as saved (what resume starts from)."""
    from model.checkpoint import EXTRA_KEY, load_weights, read_checkpoint
    from model.lightning.systems.denoiser import DenoiserSystem

    ckpt = read_checkpoint(path, expected="denoiser")
    system = DenoiserSystem(ckpt["ldm_config"], **ckpt.get(EXTRA_KEY, {}))
    load_weights(system, ckpt["state_dict"], path)
    return system.eval()


def failure_summary(stderr: str) -> str:
    """For a failed multi-process run: the error lines of all ranks first (rank one's traceback, printed last, would
    hide what rank zero died of), then the tail."""
    errors = [line for line in stderr.splitlines()
              if any(k in line for k in ("Error:", "error:", "Exception", "Fatal", "Killed", "Segmentation"))]
    return "\n".join(errors[-20:]) + "\n...\n" + stderr[-1500:]
