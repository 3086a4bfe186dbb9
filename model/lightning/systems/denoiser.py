"""Stage 2 system: a denoiser on frozen-VAE latents (or pixels, or 2-D points), v-target, CFG label dropout, EMA.

One mechanism, three uses: with `denoiser.autoencoder = "vae"` it is latent diffusion (Rombach et al. 2022),
with "none" it is pixel-space diffusion, and with the toy MLP on 2-D points it is sheet 004's toy. The math lives
in `model/base.py` and the wrapper `model/denoising.py`; this module adds training, validation and checkpoints.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor, nn

from data.sources import kind_of
from model import base, objectives
from model.autoencoder import BetaVAE
from model.checkpoint import load_weights, read_checkpoint, state_dict_under
from data.captions import batch_parts
from model.conditioning import Conditioner
from model.denoising import Denoiser, denormalise, normalise, timestep_losses
from model.text import prompt_encoder
from model.ema import ema_decay_at, ema_update
from model.errors import UserError
from model.lightning.systems.base import System
from model.optim import adamw_with_warmup
from model.denoiser import denoiser_network, sample_shape
from model.sampling import SamplerSpec


class DenoiserSystem(System):
    """Trains `net` to predict the diffusion target; `ema` is the copy that validation and sampling use."""

    kind = "denoiser"

    def __init__(self, config: dict[str, Any], num_classes: int = 0) -> None:
        super().__init__(config)
        self.num_classes = num_classes
        self.diff = self.cfg.denoiser.diffusion
        self.objective = objectives.from_config(self.diff)
        self.schedule = self.objective.table
        self.net = denoiser_network(self.cfg, num_classes)
        # labels and prompts → the network's condition; a pretrained encoder stays out of the module (frozen, and
        # its weights stay in its folder rather than in every checkpoint)
        self.conditioner = Conditioner(num_classes, prompt_encoder(self.cfg.denoiser.text))
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        # autoguidance's guide: the EMA weights at an early step (Karras et al. 2024), absent without one so that
        # checkpoints keep their keys; `guide_ready` says whether training has reached that step
        self.guide_step = self.cfg.denoiser.guide_step
        self.guide = copy.deepcopy(self.net).requires_grad_(False) if self.guide_step else None
        if self.guide is not None:
            self.register_buffer("guide_ready", torch.tensor(False))
        self.autoencoder: Optional[BetaVAE] = None
        if self.cfg.denoiser.autoencoder == "vae":
            self.autoencoder = BetaVAE(self.cfg.vae.net).requires_grad_(False).eval()
        channels = self.cfg.vae.net.latent_channels if self.autoencoder is not None else 1
        # Latent normalisation z_norm = (z - shift) / scale, per channel, estimated from training data once.
        self.register_buffer("latent_shift", torch.zeros(channels))
        self.register_buffer("latent_scale", torch.ones(channels))
        self.register_buffer("latent_stats_ready", torch.tensor(self.autoencoder is None))

    def extra(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    @property
    def latents_on_disk(self) -> bool:
        """Training and validation batches are encoded latents read from disk, not images."""
        return kind_of(self.cfg.data.name) == "latents"

    def trained_networks(self) -> list[nn.Module]:
        return [self.net, self.ema]

    def denoiser(self, net: Optional[nn.Module] = None) -> Denoiser:
        """The wrapper around `net` (default: the EMA network, with its guide once kept) with this system's schedule
        and latent statistics."""
        stats = (self.latent_shift, self.latent_scale) if self.autoencoder is not None else (None, None)
        guide = self.guide if net is None and self.guide is not None and bool(self.guide_ready) else None
        return Denoiser(self.ema if net is None else net, self.schedule, self.diff.parametrisation, self.num_classes,
                        *stats, objective=self.objective, guide=guide)

    # ----- the frozen autoencoder and the latent statistics --------------------------------------------------
    def load_vae(self, path: str, kind: str = "vae") -> None:
        """Take the VAE weights from a stage-1 checkpoint (its config must match `vae.net`), or with
        kind="denoiser" from the denoiser checkpoint being resumed."""
        if self.autoencoder is None:
            raise UserError("--load-vae was given but denoiser.autoencoder is 'none'; drop --load-vae or set it to 'vae'")
        ckpt = read_checkpoint(path, expected=kind)
        load_weights(self.autoencoder, state_dict_under(ckpt, "vae" if kind == "vae" else "autoencoder"), path)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()  # frozen: never in training mode (no sampling of z, fixed norms)
        return self

    @torch.no_grad()
    def encode_mean(self, x: Tensor) -> Tensor:
        """Images → un-normalised latents, the posterior mean (deterministic)."""
        if self.autoencoder is None:
            return x
        return self.autoencoder.encode(x)[0]

    @torch.no_grad()
    def decode(self, z_norm: Tensor) -> Tensor:
        """Normalised latents → images in [-1, 1] (identity for pixel space and points)."""
        if self.autoencoder is None:
            return z_norm
        return self.autoencoder.decode(denormalise(z_norm, self.latent_shift, self.latent_scale)).clamp(-1, 1)

    @torch.no_grad()
    def estimate_latent_stats(self, batches) -> None:
        """Per-channel mean and std of the raw latents over `batches`, averaged across DDP ranks."""
        total = torch.zeros(3, self.latent_shift.numel(), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(batches):
            if i >= self.diff.latent_stats_batches:
                break
            x = batch[0]
            cached = self.diff.cache_latents or self.latents_on_disk
            z = x.to(self.device) if cached else self.encode_mean(x.to(self.device))
            z = z.double().transpose(0, 1).flatten(1)  # (C, B*H*W)
            total += torch.stack([torch.full_like(z[:, 0], z.shape[1]), z.sum(1), z.pow(2).sum(1)])
        if self.trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        n, s, s2 = total
        mean = s / n
        std = (s2 / n - mean.pow(2)).clamp_min(1e-12).sqrt()
        self.latent_shift.copy_(mean.float())
        self.latent_scale.copy_(std.float())
        self.latent_stats_ready.fill_(True)

    def on_fit_start(self) -> None:
        if hasattr(self.conditioner.prompt_encoder, "to"):
            self.conditioner.prompt_encoder.to(self.device)
        if not bool(self.latent_stats_ready):
            self.estimate_latent_stats(self.trainer.datamodule.train_dataloader())

    # ----- training ----------------------------------------------------------------------------------------
    def z0_from_batch(self, x: Tensor, cached: bool) -> Tensor:
        """The batch in the network's space: normalised latents (cached or encoded now), or the pixels/points."""
        if self.autoencoder is None:
            return x
        return normalise(x if cached else self.encode_mean(x), self.latent_shift, self.latent_scale)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, texts = batch_parts(batch)
        z0 = self.z0_from_batch(x, self.diff.cache_latents or self.latents_on_disk)
        c = self.conditioner(y, texts, len(y), self.diff.p_uncond, self.device)
        t = self.objective.draw(z0.shape[0], z0.device)
        loss = self.loss_at(self.net, z0, c, t, base.training_noise(z0, self.diff.offset_noise)).mean()
        self.log_train_loss(loss)
        return self.finite_or_skip(loss)

    def loss_at(self, net: nn.Module, z0: Tensor, c: Optional[Tensor], t: Tensor, eps: Tensor) -> Tensor:
        """Per-sample loss (B,) of `net` at the objective's noise levels t with noise eps (`model.objectives`)."""
        return self.objective.loss(net, z0, c, t, eps)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # After every real optimiser step (not every micro-batch under accumulation); identical on all DDP ranks
        # because the weights are.
        with self.trainer.profiler.profile("ema_update"):  # its own line in trainer.profile's table
            ema_update(self.ema, self.net, ema_decay_at(self.global_step, self.diff.ema_decay))
        if self.guide is not None and self.global_step + 1 == self.guide_step:  # global_step counts this one after
            self.guide.load_state_dict(self.ema.state_dict())
            self.guide_ready.fill_(True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The EMA network's loss at fixed timesteps with fixed noise (seeded by the batch index), and their mean."""
        x, y, texts = batch_parts(batch)
        timesteps = self.diff.fixed_val_timesteps()
        per_t = timestep_losses(self.ema, self.z0_from_batch(x, cached=self.latents_on_disk),
                                self.conditioner(y, texts, len(y), device=self.device),
                                timesteps, self.objective, seed=10_000 + batch_idx).mean(1)  # (len(timesteps),)
        losses = {f"val/loss_t{t}": loss for t, loss in zip(timesteps, per_t)}
        losses["val/loss"] = per_t.mean()
        self.log_dict(losses, sync_dist=True, batch_size=len(y))

    def configure_optimizers(self):
        return adamw_with_warmup(self.net.parameters(), self.cfg.denoiser.optim, self.cfg.denoiser.trainer.max_steps)

    # ----- the periodic sample grid --------------------------------------------------------------------------
    @torch.no_grad()
    def image_grid_rows(self, x: Tensor, texts: Optional[list[str]] = None) -> list[Tensor]:
        """Rows for the periodic grid: real validation images over samples (of the same classes, or the real
        images' captions)."""
        n = x.shape[0]
        labels = torch.arange(n) % self.num_classes if self.num_classes else None
        samples = self.draw(n, labels, torch.Generator().manual_seed(self.cfg.seed), texts)
        real = self.decode(self.z0_from_batch(x, cached=True)) if self.latents_on_disk else x
        return [real, samples]

    @torch.no_grad()
    def draw(self, n: int, labels: Optional[Tensor], generator: torch.Generator,
             prompts: Optional[list[str]] = None) -> Tensor:
        """n images in [-1, 1] from the EMA network with the config's sampler, steps, spacing, clip limit and
        autoguidance (from the guide's step on), for the labels and prompts (None: the null class, the empty
        prompt); the noise comes from `generator` (on the CPU, so a seed gives the same images on every device)."""
        x_T = torch.randn(sample_shape(self.cfg, n), generator=generator).to(self.device)
        c = self.conditioner(labels, prompts, n, device=self.device)
        denoiser = self.denoiser()
        spec = SamplerSpec.from_config(self.diff)
        if denoiser.guide is None:  # before the guide's step: the EMA alone
            spec = spec.replace(autoguidance=0.0)
        z = denoiser.sample(x_T, c, spec, generator=generator)
        return self.decode(z)
