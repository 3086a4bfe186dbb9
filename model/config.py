"""The run configuration: typed dataclasses that JSON files and `--dotted.keys` map onto (jsonargparse).

One file configures both stages: `data`, then `vae` (stage 1) and `denoiser` (stage 2), each with its own
network, optimiser and trainer settings, so `--train-vae --train-denoiser` runs from a single config.
Each sub-config validates its own ranges in `__post_init__`; the cross-field constraints (sizes that must
divide, channels that must agree) are checked per stage, so a VAE-only config needs no coherent denoiser.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from data.config import MAX_BATCH_SIZE, DataConfig
from data.sources import kind_of
from model.autoencoder.config import SSIM_MIN_SIZE, DiscConfig, LossConfig, VAEConfig
from model.denoiser import NETWORKS, network_config
from model.denoiser.config import ToyMLPConfig, UNetConfig
from model.text.config import TextConfig
from model.sampling import AUTOGUIDANCE_RULE, GRIDS, NOISE_SCALE_RULE, SAMPLERS, autoguidance_ok, noise_scale_ok
from model.objectives import OBJECTIVES
from model.errors import UserError


MAX_T = 100_000  # diffusion steps: the schedule tables (float64, T + 1 entries) stay small


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


@dataclass
class OptimConfig:
    """AdamW settings. The learning rate is per optimiser step of the global batch."""

    lr: float = 2e-4  # a common safe AdamW rate for small UNets and VAEs
    weight_decay: float = 0.0  # diffusion UNets are usually trained without decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW defaults
    warmup_steps: int = 0  # linear warm-up of the rate over the first steps
    decay: Literal["none", "cosine"] = "none"  # after warm-up: hold the rate, or a half cosine to the last step
    final_lr_fraction: float = 0.0  # cosine: the rate at the last step, as a fraction of lr
    # torch's fused AdamW (one kernel for every tensor; CPU and CUDA): the loop's update to float32 rounding, 4x faster
    # on the digits UNet's 119 small tensors on a CPU; off by default so that runs keep the loop's exact numbers
    fused: bool = False

    def __post_init__(self) -> None:
        _check(0.0 <= self.final_lr_fraction <= 1.0,
               f"optim.final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}; set a positive learning rate such as 2e-4")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")


# what the quality evaluations during training log, for best.ckpt to follow; shares (higher is better) and distances
HIGHER_IS_BETTER = ("val/precision", "val/recall", "val/coverage")
QUALITY_MONITORS = ("val/pixel_fd", "val/kid", *HIGHER_IS_BETTER, "val/fid")


@dataclass
class TrainerConfig:
    """What Lightning's Trainer gets, plus the intervals of our callbacks (all in optimiser steps)."""

    max_steps: int = 1000  # optimiser steps of this stage
    batch_size: Optional[int] = None  # per-device batch of this stage; None = data.batch_size
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"  # 16-mixed uses Lightning's loss scaler
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0  # clip the global grad norm; None turns it off
    val_every_n_steps: int = 250
    limit_val_batches: Optional[int] = None  # None: the whole validation split
    checkpoint_every_n_steps: int = 500  # periodic checkpoints besides last.ckpt and best.ckpt
    images_every_n_steps: int = 500  # reconstruction / sample grids; 0 turns them off
    log_every_n_steps: int = 25
    logger: Literal["csv", "tensorboard", "wandb"] = "csv"  # csv needs nothing; wandb runs offline without an account
    wandb_project: str = "latent-diffusion"
    wandb_offline: bool = True
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", a count such as "2", or a list such as "[0,1]"
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning picks DDP when devices > 1
    progress_bar: bool = True
    deterministic: bool = False  # True asks torch for deterministic kernels (slower on GPU)
    channels_last: bool = False  # NHWC weights: faster depthwise convs on CPUs and tensor cores (outputs ~1e-6 apart)
    compile: bool = False  # torch.compile the networks: faster steps after a compilation of a minute or more
    profile: bool = False  # write profile.json and fit-profile.txt to the stage folder: seconds per Lightning action
    # sample quality during training (denoiser stage): 0 = off; a multiple of log_every_n_steps
    fid_every_n_steps: int = 0
    fid_num_samples: int = 500  # samples per evaluation, split across the DDP ranks
    fid_real_pool: int = 10_000  # real images the pixel metrics' reference is drawn from
    # also log FID as val/fid: "inception" (Inception-v3, torch-fidelity's weights; RGB data at 64 px and up) or a
    # model.scripts.train_classifier file (the domain FID of small grey data such as digits); None = pixel metrics only
    fid_features: Optional[str] = None
    best_by: Optional[str] = None  # what best.ckpt follows: None = the validation loss; val/pixel_fd, val/fid, ...

    def __post_init__(self) -> None:
        _check(self.max_steps > 0, f"trainer.max_steps must be > 0, got {self.max_steps}")
        _check(self.batch_size is None or 0 < self.batch_size <= MAX_BATCH_SIZE,
               f"trainer.batch_size must be in [1, {MAX_BATCH_SIZE}] or null (= data.batch_size), got "
               f"{self.batch_size}")
        _check(self.accumulate_grad_batches >= 1,
               f"trainer.accumulate_grad_batches must be >= 1, got {self.accumulate_grad_batches}")
        _check(self.gradient_clip_val is None or self.gradient_clip_val > 0,
               f"trainer.gradient_clip_val must be > 0 or null, got {self.gradient_clip_val}")
        for key in ("val_every_n_steps", "checkpoint_every_n_steps", "log_every_n_steps"):
            _check(getattr(self, key) > 0, f"trainer.{key} must be > 0, got {getattr(self, key)}")
        _check(self.images_every_n_steps >= 0,
               f"trainer.images_every_n_steps must be >= 0 (0 = off), got {self.images_every_n_steps}")
        _check(self.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {self.num_nodes}")
        _check(self.fid_every_n_steps >= 0 and self.fid_every_n_steps % self.log_every_n_steps == 0,
               f"trainer.fid_every_n_steps must be 0 (off) or a multiple of trainer.log_every_n_steps "
               f"({self.log_every_n_steps}), got {self.fid_every_n_steps}")
        _check(self.fid_num_samples >= 2 and self.fid_real_pool >= 2 * self.fid_num_samples,
               f"trainer.fid_num_samples must be >= 2 and trainer.fid_real_pool at least twice it, got "
               f"{self.fid_num_samples} and {self.fid_real_pool}")
        _check(self.best_by in (None, "val/loss", "val/recon", *QUALITY_MONITORS),
               f"trainer.best_by must be null, val/loss, val/recon or one of {sorted(QUALITY_MONITORS)}, "
               f"got {self.best_by!r}")
        _check(self.best_by not in QUALITY_MONITORS or self.fid_every_n_steps > 0,
               f"trainer.best_by {self.best_by} needs trainer.fid_every_n_steps > 0 to compute it")
        _check(self.best_by != "val/fid" or self.fid_features is not None,
               "trainer.best_by val/fid needs trainer.fid_features (inception, or a model.scripts.train_classifier "
               "file)")


@dataclass
class DiffusionConfig:
    """The forward process, the training target and the sampler defaults (docs/design.md)."""

    T: int = 1000  # number of diffusion steps; t = 0 is data
    schedule: Literal["linear", "cosine", "sigmoid"] = "cosine"  # cosine suits small images and latents
    # what the network is trained on (model/objectives.py): vp (the table of `schedule`, a `parametrisation`
    # network), flow (rectified flow, velocity target, logit-normal t) or edm (Karras et al. 2022 preconditioning)
    objective: Literal["vp", "flow", "edm"] = "vp"
    parametrisation: Literal["eps", "x0", "v"] = "v"  # Salimans & Ho 2022: stable at both ends of t (vp only)
    sigma_data: float = 1.0  # edm's σ_data: the data's std; the denoiser's latents are normalised to 1
    loss: Literal["l2", "l1"] = "l2"
    min_snr_gamma: Optional[float] = None  # Hang et al. 2023 weighting; 5.0 is their choice
    # flow's training times t = sigmoid(m + s n), n ~ N(0, 1) (Esser et al. 2024): m > 0 puts more of them at high
    # noise, where the coarse shape (and so the class) of an image is decided
    flow_logit_mean: float = 0.0
    flow_logit_std: float = 1.0
    p_uncond: float = 0.1  # label dropout to the null class for classifier-free guidance (Ho & Salimans)
    ema_decay: float = 0.999  # EMA of the weights used for sampling
    clip_limit: Optional[float] = None  # default sampling clamp of the predicted x0; None = no clamp
    # the sampler of the sample grids written during training and the default of `sample -cfg`
    sampler: str = "ddim"  # a name of model.sampling.SAMPLERS (ddpm, ddim, dpmpp_2m, euler, heun, unipc, ...)
    sample_steps: int = 50  # steps of every sampler but DDPM (which runs all T unless told)
    sample_spacing: str = "uniform"  # the grid of noise levels (model/sampling/grids.py): uniform, noise-dense, ...
    guidance_interval: Optional[list[float]] = None  # [lo, hi]: guide only for σ in (lo, hi]; None: at every level
    guidance_rescale: float = 0.0  # CFG rescale φ in [0, 1] (Lin et al. 2024, eq. 16), with zero_terminal_snr 0.7
    # the stochastic samplers' fresh noise times s_noise (Karras et al. 2022, S_noise): above 1 widens the samples
    s_noise: float = 1.0
    # autoguidance (Karras et al. 2024): sampling steps away from the EMA weights of an early step by the weight a:
    # out = guide + (1 + a)(out - guide); it widens the samples without costing their class. 0: off
    autoguidance: float = 0.0
    guide_fraction: float = 0.0  # training keeps the EMA weights after this share of max_steps as the guide; 0: none
    zero_terminal_snr: bool = False  # rescale the vp table to alpha_bar_T = 0 (Lin et al. 2024, Alg. 1); v or x0 only
    offset_noise: float = 0.0  # training noise + offset · N(0, 1) per channel (Guttenberg 2023); 0.1 is common
    val_timesteps: list[int] = field(default_factory=list)  # fixed-t validation losses; [] = 5 evenly spaced
    cache_latents: bool = False  # encode the training set once instead of every epoch (no flips then)
    latent_stats_batches: int = 20  # batches used to estimate the latent shift and scale

    def __post_init__(self) -> None:
        _check(0 < self.T <= MAX_T, f"denoiser.diffusion.T must be in [1, {MAX_T}] (papers use 1000 to 4000), "
                                    f"got {self.T}")
        _check(self.objective in OBJECTIVES,
               f"denoiser.diffusion.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        _check(self.sigma_data > 0, f"denoiser.diffusion.sigma_data must be > 0, got {self.sigma_data}")
        _check(self.objective == "vp" or self.min_snr_gamma is None,
               f"denoiser.diffusion.min_snr_gamma weights the vp objective's loss; {self.objective} has its own "
               f"weighting, so set min_snr_gamma to null")
        _check(self.objective == "flow" or (self.flow_logit_mean, self.flow_logit_std) == (0.0, 1.0),
               f"denoiser.diffusion.flow_logit_mean and flow_logit_std set the flow objective's training times; "
               f"{self.objective} draws its own, so leave them at 0 and 1")
        _check(self.flow_logit_std > 0, f"denoiser.diffusion.flow_logit_std must be > 0, got {self.flow_logit_std}")
        _check(not self.zero_terminal_snr or (self.objective == "vp" and self.parametrisation != "eps"),
               "denoiser.diffusion.zero_terminal_snr ends the vp table at pure noise, where an eps network cannot "
               "give x0; set parametrisation to v (or x0), or zero_terminal_snr to false")
        _check(0.0 <= self.guidance_rescale <= 1.0,
               f"denoiser.diffusion.guidance_rescale must be in [0, 1], got {self.guidance_rescale}")
        _check(noise_scale_ok(self.s_noise),
               f"denoiser.diffusion.s_noise must be {NOISE_SCALE_RULE}, got {self.s_noise}")
        _check(autoguidance_ok(self.autoguidance),
               f"denoiser.diffusion.autoguidance must be {AUTOGUIDANCE_RULE}, got {self.autoguidance}")
        _check(0.0 <= self.guide_fraction < 1.0,
               f"denoiser.diffusion.guide_fraction must be in [0, 1) (0: no guide), got {self.guide_fraction}")
        _check(self.autoguidance == 0.0 or self.guide_fraction > 0,
               f"denoiser.diffusion.autoguidance {self.autoguidance} needs a guide: set guide_fraction (e.g. 0.18, "
               f"the EMA weights after 18% of the steps), or autoguidance to 0")
        _check(self.offset_noise >= 0.0, f"denoiser.diffusion.offset_noise must be >= 0, got {self.offset_noise}")
        _check(0.0 <= self.p_uncond <= 1.0,
               f"denoiser.diffusion.p_uncond must be in [0, 1], got {self.p_uncond}")
        _check(0.0 <= self.ema_decay < 1.0,
               f"denoiser.diffusion.ema_decay must be in [0, 1), got {self.ema_decay}")
        _check(self.clip_limit is None or self.clip_limit > 0,
               f"denoiser.diffusion.clip_limit must be > 0 or null (no clipping), got {self.clip_limit}")
        _check(self.min_snr_gamma is None or self.min_snr_gamma > 0,
               f"denoiser.diffusion.min_snr_gamma must be > 0 or null, got {self.min_snr_gamma}")
        _check(self.sampler in SAMPLERS,
               f"denoiser.diffusion.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        _check(self.sample_spacing in GRIDS,
               f"denoiser.diffusion.sample_spacing must be one of {', '.join(GRIDS)}, got {self.sample_spacing!r}")
        _check(self.guidance_interval is None or (len(self.guidance_interval) == 2
                                                  and 0 <= self.guidance_interval[0] < self.guidance_interval[1]),
               f"denoiser.diffusion.guidance_interval must be null or [lo, hi] with 0 <= lo < hi (noise levels σ), "
               f"got {self.guidance_interval}")
        _check(0 < self.sample_steps <= self.T,
               f"denoiser.diffusion.sample_steps must be in [1, T={self.T}], got {self.sample_steps}")
        bad = [t for t in self.val_timesteps if not 1 <= t <= self.T]
        _check(not bad, f"denoiser.diffusion.val_timesteps must lie in [1, T={self.T}], got {bad}")
        _check(self.latent_stats_batches > 0,
               f"denoiser.diffusion.latent_stats_batches must be > 0, got {self.latent_stats_batches}")

    def fixed_val_timesteps(self) -> list[int]:
        """The timesteps of the fixed-t validation loss (sheet 000, 2.2e)."""
        if self.val_timesteps:
            return list(self.val_timesteps)
        return sorted({max(1, round(self.T * f)) for f in (0.05, 0.25, 0.5, 0.75, 0.95)})


@dataclass
class VAEStage:
    """Stage 1: the beta-VAE network, its reconstruction loss, optimiser and trainer."""

    net: VAEConfig = field(default_factory=VAEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)  # off unless disc.weight > 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class DenoiserStage:
    """Stage 2: the denoiser network, diffusion settings, optimiser and trainer."""

    autoencoder: Literal["vae", "none"] = "vae"  # "none" is pixel-space diffusion
    network: str = "unet"  # a network of model/denoiser/__init__.py NETWORKS: unet (images, latents), toy_mlp (points)
    unet: UNetConfig = field(default_factory=UNetConfig)
    toy: ToyMLPConfig = field(default_factory=ToyMLPConfig)
    text: TextConfig = field(default_factory=TextConfig)  # the prompt encoder; none = no prompts
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        _check(self.network in NETWORKS,
               f"denoiser.network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        _check(not self.text.on or NETWORKS[self.network].kind == "images",
               f"denoiser.text needs a network that reads prompts (unet); {self.network} does not")
        _check(self.text.on or not self.unet.cross_attention_levels,
               "denoiser.unet.cross_attention_levels is set but denoiser.text.encoder is none; choose a text "
               "encoder (bytes, or pretrained with denoiser.text.path) or clear cross_attention_levels")

    @property
    def guide_step(self) -> int:
        """The optimiser step whose EMA weights become autoguidance's guide: guide_fraction of max_steps, at least
        1; 0 without a guide."""
        fraction = self.diffusion.guide_fraction
        return max(1, round(fraction * self.trainer.max_steps)) if fraction else 0


@dataclass
class Config:
    """Everything a run needs. `name` and `-n` name the run folder `<output_dir>/<name>-<n>`."""

    name: str = "run"  # the CLI sets it from the config file's name when the file does not
    output_dir: str = "runs"
    seed: int = 0  # seeds torch, numpy and python in every process (Lightning's seed_everything)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEStage = field(default_factory=VAEStage)
    denoiser: DenoiserStage = field(default_factory=DenoiserStage)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name,
               f"name must be a non-empty folder name without '/', got {self.name!r}")
        check_vae_shapes(self)  # the denoiser's checks run when stage 2 is trained (check_denoiser_shapes)


def check_vae_shapes(cfg: Config) -> None:
    """Stage-1 checks: the VAE reads the data's channels and its downsampling factor divides the image size."""
    data, vae = cfg.data, cfg.vae.net
    if kind_of(data.name) == "points":
        return
    _check(vae.in_channels == data.channels,
           f"vae.net.in_channels ({vae.in_channels}) must equal data.channels ({data.channels}); set them equal")
    f = vae.downsample_factor
    _check(data.image_size % f == 0,
           f"data.image_size ({data.image_size}) must be divisible by the VAE downsampling factor {f}; "
           f"change data.image_size or vae.net.channel_mult")
    blurred = [f"vae.loss.{name}" for name in ("ssim", "ycbcr") if name in cfg.vae.loss.weights()]
    _check(not blurred or data.image_size >= SSIM_MIN_SIZE,
           f"{' and '.join(blurred)}: SSIM needs images of at least {SSIM_MIN_SIZE} px a side, got data.image_size "
           f"{data.image_size}; use larger images or set {' and '.join(blurred)} to 0")
    if cfg.vae.disc.enabled:
        check_disc_depth(data.image_size, cfg.vae.disc.layers)


def check_disc_depth(image_size: int, layers: int) -> None:
    """The patch discriminator halves the image `layers` times and then needs a 4x4 kernel's room twice more."""
    from model.autoencoder.discriminator import deepest_fitting, patch_grid

    if patch_grid(image_size, layers) == 0:
        deepest = deepest_fitting(image_size)
        fix = f"set vae.disc.layers to at most {deepest}" if deepest else "use larger images or vae.disc.weight 0"
        raise UserError(f"vae.disc.layers {layers} is too deep for {image_size} px images (each layer halves "
                        f"them); {fix}")


def check_denoiser_shapes(cfg: Config) -> None:
    """Stage-2 checks: the network's input channels and size fit the latents (or pixels, or points)."""
    data, vae, den = cfg.data, cfg.vae.net, cfg.denoiser
    points, network = kind_of(data.name) == "points", NETWORKS[den.network]
    if points != (network.kind == "points"):
        fits = [name for name, n in NETWORKS.items() if (n.kind == "points") == points]
        raise UserError(f"data.name {data.name} holds {kind_of(data.name)} but denoiser.network {den.network} "
                        f"denoises {network.kind}; set denoiser.network to {' or '.join(fits)}")
    if points:
        _check(den.autoencoder == "none", f"data.name {data.name} holds points, which no VAE encodes; set "
                                          f"denoiser.autoencoder to none")
        return
    _check(not den.text.on or data.captions,
           f"denoiser.text.encoder is {den.text.encoder} but data.captions is false, so every prompt would be empty; "
           f"set data.captions true (a folder with metadata.jsonl or <image>.txt captions)")
    check_vae_shapes(cfg)
    if den.autoencoder == "vae":
        f = vae.downsample_factor
        size, channels, what = data.image_size // f, vae.latent_channels, "vae.net.latent_channels"
    else:
        size, channels, what = data.image_size, data.channels, "data.channels"
    net, field = network_config(den), f"denoiser.{network.config_field}"
    _check(net.in_channels == channels,
           f"{field}.in_channels ({net.in_channels}) must equal {what} ({channels}); set them equal")
    bias = getattr(net, "class_bias_size", 0)
    _check(bias in (0, size), f"{field}.class_bias_size ({bias}) must equal the denoiser input size ({size}); set it "
                              f"to {size}, or 0 for no class bias maps")
    g = 2 ** (len(net.channel_mult) - 1)
    _check(size % g == 0,
           f"the denoiser input size {size} must be divisible by 2**(levels-1) = {g}; "
           f"shorten {field}.channel_mult or change data.image_size")


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON types (stored in checkpoints and written next to them)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def write_json(cfg: Config, path: Path) -> None:
    from model.writes import write_text

    write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")
