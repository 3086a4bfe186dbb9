"""Stage 1 system: the beta-VAE with a geometrically decaying KL weight (sheet 001, exercise 1), optionally sharpened by
a patch discriminator (`vae.disc`, model.autoencoder.discriminator)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from model.autoencoder import BetaVAE, ReconstructionLoss, beta_at, kl_divergence
from model.autoencoder.discriminator import PatchDiscriminator, adaptive_weight, generator_loss, hinge_d_loss
from model.lightning.systems.base import System
from model.optim import adamw_with_warmup


class VAESystem(System):
    """Trains `BetaVAE` on images: loss = reconstruction + β(step)·KL, β a pure function of the step."""

    kind = "vae"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.vae = BetaVAE(self.cfg.vae.net)
        self.recon_loss = ReconstructionLoss(self.cfg.vae.loss)
        d = self.cfg.vae.disc
        self.disc = PatchDiscriminator(self.cfg.vae.net.in_channels, d.base_channels, d.layers) if d.enabled else None

    def trained_networks(self) -> list[torch.nn.Module]:
        return [self.vae] + ([self.disc] if self.disc is not None else [])

    def beta(self) -> float:
        """β at the current optimiser step; resuming restores the step, so β continues exactly."""
        n = self.cfg.vae.net
        return beta_at(self.global_step, n.beta_start, n.kl_factor, n.beta_decay_period, n.beta_min)

    def _losses(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor, Tensor]:
        x_hat, mean, logvar, _ = self.vae(x)
        recon, terms = self.recon_loss(x_hat, x)  # (B,), {name: (B,)}
        kl = kl_divergence(mean, logvar)  # (B,)
        return recon, kl, terms, mean, x_hat

    def training_loss(self, x: Tensor, with_logs: bool = True) -> tuple[Tensor, dict[str, Any]]:
        """The batch's loss, recon + β·KL (+ λ·L_G + L_D with the discriminator), and the values to log (empty
        unless `with_logs`: they cost reductions that only the logging steps need)."""
        recon, kl, terms, mean, x_hat = self._losses(x)
        beta = self.beta()
        loss = (recon + beta * kl).mean()
        logs = {"train/recon": recon.mean(), "train/kl": kl.mean(), "train/beta": beta,
                "train/latent_mean": mean.mean(), "train/latent_std": mean.std(),
                **{f"train/{k}": v.mean() for k, v in terms.items()}} if with_logs else {}
        if self.disc is not None:
            adversarial = self.adversarial_losses(x, x_hat, recon.mean())
            loss = loss + adversarial["train/d_weight"] * adversarial["train/g_loss"] + adversarial["train/d_loss"]
            logs.update(adversarial if with_logs else {})
        return loss, logs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0]
        logging = self.is_logging_step()  # the values beyond the loss only on the steps the logger writes
        loss, logs = self.training_loss(x, with_logs=logging)
        self.log_train_loss(loss)
        if logging:
            self.log_dict(logs, on_step=True)
        return self.finite_or_skip(loss)

    def adversarial_losses(self, x: Tensor, x_hat: Tensor, rec_loss: Tensor) -> dict[str, Tensor]:
        """The discriminator's hinge loss (on x̂ detached: it trains D only) and the decoder's loss −D(x̂) (through a
        detached D: it trains the VAE only) with its adaptive weight; both scaled by 0 before vae.disc.start_step,
        when D still runs so that every DDP rank uses every parameter."""
        on = float(self.global_step >= self.cfg.vae.disc.start_step)
        logits_real, logits_fake = self.disc(x), self.disc(x_hat.detach())
        g_loss = generator_loss(self.disc.frozen(x_hat))
        weight = (adaptive_weight(rec_loss, g_loss, self.vae.decoder.out[-1].weight) if on
                  else torch.zeros((), device=x.device))
        return {"train/d_loss": on * hinge_d_loss(logits_real, logits_fake), "train/g_loss": g_loss,
                "train/d_weight": on * self.cfg.vae.disc.weight * weight,
                "train/logits_real": logits_real.detach().mean(), "train/logits_fake": logits_fake.detach().mean()}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x = batch[0]
        recon, kl, _, _, x_hat = self._losses(x)
        self.log_dict({"val/recon": recon.mean(), "val/kl": kl.mean(),
                       "val/mse": (x_hat - x).pow(2).mean()}, sync_dist=True, prog_bar=False, batch_size=len(x))

    def configure_optimizers(self):
        """AdamW over the VAE and, when on, the discriminator as a second parameter group (its own rate and betas):
        one optimiser keeps Lightning's automatic optimisation, so both networks step together on every batch."""
        groups = [{"params": list(self.vae.parameters())}]
        if self.disc is not None:
            d = self.cfg.vae.disc
            groups.append({"params": list(self.disc.parameters()), "lr": d.lr or self.cfg.vae.optim.lr,
                           "betas": tuple(d.betas)})
        return adamw_with_warmup(groups, self.cfg.vae.optim, self.cfg.vae.trainer.max_steps)

    @torch.no_grad()
    def image_grid_rows(self, x: Tensor, texts=None) -> list[Tensor]:
        """Rows for the periodic grid: inputs over their reconstructions (posterior mean)."""
        was_training = self.vae.training
        self.vae.eval()
        x_hat = self.vae(x)[0].clamp(-1, 1)
        self.vae.train(was_training)
        return [x, x_hat]
