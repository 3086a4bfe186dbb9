"""Stage 2 system: a denoiser on frozen-VAE latents (or pixels, or 2-D points), v-target, CFG label dropout, EMA.

One mechanism, three uses: with `denoiser.autoencoder = "vae"` it is latent diffusion (Rombach et al. 2022),
with "none" it is pixel-space diffusion, and with the toy MLP on 2-D points it is sheet 004's toy.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from model import base
from model.autoencoder import BetaVAE
from model.checkpoint import load_weights, read_checkpoint, state_dict_under
from model.config import from_dict
from model.denoiser import ConvNeXtUNet, ToyMLP
from model.errors import UserError
from model.lightning.common import System, adamw_with_warmup
from model.lightning.ema import ema_decay_at, ema_update


SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")  # the names `DenoiserSystem.sample` and the scripts' --sampler take


def build_network(cfg, num_classes: int) -> nn.Module:
    """The denoiser network named by `denoiser.network`, with the data's number of classes."""
    den = cfg.denoiser
    if den.network == "toy_mlp":
        return ToyMLP(dataclasses.replace(den.toy, num_classes=num_classes))
    return ConvNeXtUNet(dataclasses.replace(den.unet, num_classes=num_classes))


class DenoiserSystem(System):
    """Trains `net` to predict the diffusion target; `ema` is the copy that validation and sampling use."""

    kind = "denoiser"

    def __init__(self, config: dict[str, Any], num_classes: int = 0) -> None:
        super().__init__(config)
        self.num_classes = num_classes
        self.diff = self.cfg.denoiser.diffusion
        self.schedule = base.make_schedule(self.diff.schedule, self.diff.T)
        self.net = build_network(self.cfg, num_classes)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
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
    def null_class(self) -> int:
        """The index of the learned null class (= num_classes), used for unconditional outputs."""
        return self.num_classes

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

    def normalise(self, z: Tensor) -> Tensor:
        if self.autoencoder is None:
            return z
        return (z - self.latent_shift.view(1, -1, 1, 1)) / self.latent_scale.view(1, -1, 1, 1)

    def denormalise(self, z: Tensor) -> Tensor:
        if self.autoencoder is None:
            return z
        return z * self.latent_scale.view(1, -1, 1, 1) + self.latent_shift.view(1, -1, 1, 1)

    @torch.no_grad()
    def decode(self, z_norm: Tensor) -> Tensor:
        """Normalised latents → images in [-1, 1] (identity for pixel space and points)."""
        if self.autoencoder is None:
            return z_norm
        return self.autoencoder.decode(self.denormalise(z_norm)).clamp(-1, 1)

    @torch.no_grad()
    def estimate_latent_stats(self, batches) -> None:
        """Per-channel mean and std of the raw latents over `batches`, averaged across DDP ranks."""
        total = torch.zeros(3, self.latent_shift.numel(), dtype=torch.float64, device=self.device)
        for i, (x, _) in enumerate(batches):
            if i >= self.diff.latent_stats_batches:
                break
            z = x.to(self.device) if self.diff.cache_latents else self.encode_mean(x.to(self.device))
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
        if not bool(self.latent_stats_ready):
            self.estimate_latent_stats(self.trainer.datamodule.train_dataloader())

    # ----- training ----------------------------------------------------------------------------------------
    def z0_from_batch(self, x: Tensor, cached: bool) -> Tensor:
        return self.normalise(x if cached else self.encode_mean(x))

    def condition(self, y: Tensor, p_uncond: float) -> Optional[Tensor]:
        """Class labels for the network: unlabelled (-1) and dropped labels become the null class."""
        if self.num_classes == 0:
            return None
        c = torch.where(y < 0, torch.full_like(y, self.null_class), y)
        if p_uncond > 0:
            drop = torch.rand(y.shape, device=y.device) < p_uncond
            c = torch.where(drop, torch.full_like(c, self.null_class), c)
        return c

    def loss_at(self, net: nn.Module, z0: Tensor, c: Optional[Tensor], t: Tensor, eps: Tensor) -> Tensor:
        """Per-sample diffusion loss of `net` at timesteps t with noise eps."""
        x_t = base.q_sample(z0, t, eps, self.schedule)
        pred = net(x_t, t, c)
        return base.diffusion_loss(pred, z0, eps, t, self.schedule, self.diff.parametrisation, self.diff.loss,
                                   self.diff.min_snr_gamma)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        z0 = self.z0_from_batch(x, self.diff.cache_latents)
        c = self.condition(y, self.diff.p_uncond)
        t = torch.randint(1, self.diff.T + 1, (z0.shape[0],), device=z0.device)
        loss = self.loss_at(self.net, z0, c, t, torch.randn_like(z0)).mean()
        self.log_train_loss(loss)
        return self.finite_or_skip(loss)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # After every real optimiser step (not every micro-batch under accumulation); identical on all DDP ranks
        # because the weights are.
        ema_update(self.ema, self.net, ema_decay_at(self.global_step, self.diff.ema_decay))

    @torch.no_grad()
    def timestep_losses(self, x: Tensor, y: Tensor, timesteps: list[int], batch_idx: int) -> Tensor:
        """The EMA network's per-sample loss on images x at each fixed t, with noise fixed by the batch index.

        Returns (len(timesteps), B). The same noise for every t and every evaluation, so the figures of two
        checkpoints differ only by their networks (sheet 000, 2.2e: the loss of a test set at fixed timesteps).
        """
        z0 = self.z0_from_batch(x, cached=False)
        c = self.condition(y, p_uncond=0.0)
        gen = torch.Generator(device="cpu").manual_seed(10_000 + batch_idx)
        eps = torch.randn(z0.shape, generator=gen).to(z0)
        full = [torch.full((z0.shape[0],), t, device=z0.device, dtype=torch.long) for t in timesteps]
        return torch.stack([self.loss_at(self.ema, z0, c, t, eps) for t in full])  # (len(timesteps), B)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The EMA network's loss at fixed timesteps with fixed noise, and their mean."""
        timesteps = self.diff.fixed_val_timesteps()
        per_t = self.timestep_losses(*batch, timesteps, batch_idx).mean(1)  # (len(timesteps),)
        losses = {f"val/loss_t{t}": loss for t, loss in zip(timesteps, per_t)}
        losses["val/loss"] = per_t.mean()
        self.log_dict(losses, sync_dist=True)

    def configure_optimizers(self):
        return adamw_with_warmup(self.net.parameters(), self.cfg.denoiser.optim)

    # ----- sampling ----------------------------------------------------------------------------------------
    def sample_shape(self, n: int) -> tuple[int, ...]:
        cfg = self.cfg
        if cfg.denoiser.network == "toy_mlp":
            return (n, cfg.denoiser.toy.dim)
        if self.autoencoder is not None:
            size = cfg.data.image_size // cfg.vae.net.downsample_factor
            return (n, cfg.vae.net.latent_channels, size, size)
        return (n, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)

    def denoiser_fn(self, cfg_scale: float = 0.0) -> Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]:
        """The EMA network as a sampler callable, wrapped in classifier-free guidance when w != 0."""
        fn = self.ema
        if cfg_scale != 0.0:
            if self.num_classes == 0:
                raise UserError("--cfg-scale needs a class-conditional model, but this one is unconditional; "
                                "drop --cfg-scale")
            fn = base.classifier_free_guidance(self.ema, cfg_scale, self.null_class)
        return fn

    @torch.no_grad()
    def sample(self, n: int, labels: Optional[Tensor] = None, *, sampler: str = "ddim", steps: Optional[int] = None,
               eta: float = 0.0, clip_limit: Optional[float] = None, cfg_scale: float = 0.0,
               generator: Optional[torch.Generator] = None, x_T: Optional[Tensor] = None,
               t_start: Optional[int] = None, callback=None) -> Tensor:
        """Draw n samples with `sampler` (ddpm, ddim or dpmpp_2m); returns normalised latents (decode them with
        `decode`). labels None → the null class. DDPM runs every step unless `steps` is given; the others default
        to the config's sample_steps. `eta` is DDIM's; the generator draws x_T and DDPM's noise."""
        if self.num_classes and labels is None:
            labels = torch.full((n,), self.null_class, dtype=torch.long)
        c = labels.to(self.device) if (labels is not None and self.num_classes) else None
        if x_T is None:
            x_T = torch.randn(self.sample_shape(n), generator=generator).to(self.device)
        common = dict(c=c, parametrisation=self.diff.parametrisation, t_start=t_start, clip_limit=clip_limit,
                      callback=callback)
        fn = self.denoiser_fn(cfg_scale)
        if sampler == "ddpm":
            return base.sample_ddpm(fn, x_T, self.schedule, steps=steps, generator=generator, **common)
        steps = steps or self.diff.sample_steps
        if sampler == "ddim":
            return base.sample_ddim(fn, x_T, self.schedule, steps=steps, eta=eta, generator=generator, **common)
        if sampler == "dpmpp_2m":
            return base.sample_dpmpp_2m(fn, x_T, self.schedule, steps=steps, **common)
        raise UserError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")

    @torch.no_grad()
    def image_grid_rows(self, x: Tensor) -> list[Tensor]:
        """Rows for the periodic grid: real validation images over samples (of the same classes)."""
        n = x.shape[0]
        gen = torch.Generator().manual_seed(self.cfg.seed)
        labels = None
        if self.num_classes:
            labels = torch.arange(n) % self.num_classes
        z = self.sample(n, labels, sampler=self.diff.sampler, clip_limit=self.diff.clip_limit, generator=gen)
        return [x, self.decode(z)]


def load_denoiser(path: str, map_location: str = "cpu") -> DenoiserSystem:
    """Rebuild a DenoiserSystem (networks, EMA, VAE, latent statistics) from its checkpoint."""
    ckpt = read_checkpoint(path, expected="denoiser")
    system = DenoiserSystem(ckpt["ldm_config"], **ckpt.get("ldm_extra", {}))
    load_weights(system, ckpt["state_dict"], path)
    return system.to(map_location).eval()


def config_of(path: str):
    """The resolved Config stored in a checkpoint."""
    return from_dict(read_checkpoint(path)["ldm_config"])
