"""Stage 1 system: the beta-VAE with a geometrically decaying KL weight (sheet 001, exercise 1)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from model.autoencoder import BetaVAE, ReconstructionLoss, beta_at, kl_divergence
from model.lightning.systems.base import System
from model.optim import adamw_with_warmup


class VAESystem(System):
    """Trains `BetaVAE` on images: loss = reconstruction + β(step)·KL, β a pure function of the step."""

    kind = "vae"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.vae = BetaVAE(self.cfg.vae.net)
        self.recon_loss = ReconstructionLoss(self.cfg.vae.loss)

    def trained_networks(self) -> list[torch.nn.Module]:
        return [self.vae]

    def beta(self) -> float:
        """β at the current optimiser step; resuming restores the step, so β continues exactly."""
        n = self.cfg.vae.net
        return beta_at(self.global_step, n.beta_start, n.kl_factor, n.beta_decay_period, n.beta_min)

    def _losses(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor, Tensor]:
        x_hat, mean, logvar, _ = self.vae(x)
        recon, terms = self.recon_loss(x_hat, x)  # (B,), {name: (B,)}
        kl = kl_divergence(mean, logvar)  # (B,)
        return recon, kl, terms, mean, x_hat

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        recon, kl, terms, mean, _ = self._losses(x)
        beta = self.beta()
        loss = (recon + beta * kl).mean()
        self.log_train_loss(loss)
        if self.is_logging_step():  # the rest only on the steps the logger writes
            extras = {"train/recon": recon.mean(), "train/kl": kl.mean(), "train/beta": beta,
                      "train/latent_mean": mean.mean(), "train/latent_std": mean.std()}
            self.log_dict({**extras, **{f"train/{k}": v.mean() for k, v in terms.items()}}, on_step=True)
        return self.finite_or_skip(loss)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        recon, kl, _, _, x_hat = self._losses(x)
        self.log_dict({"val/recon": recon.mean(), "val/kl": kl.mean(),
                       "val/mse": (x_hat - x).pow(2).mean()}, sync_dist=True, prog_bar=False)

    def configure_optimizers(self):
        return adamw_with_warmup(self.vae.parameters(), self.cfg.vae.optim, self.cfg.vae.trainer.max_steps)

    @torch.no_grad()
    def image_grid_rows(self, x: Tensor) -> list[Tensor]:
        """Rows for the periodic grid: inputs over their reconstructions (posterior mean)."""
        was_training = self.vae.training
        self.vae.eval()
        x_hat = self.vae(x)[0].clamp(-1, 1)
        self.vae.train(was_training)
        return [x, x_hat]
