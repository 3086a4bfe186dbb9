"""KL term of the beta-VAE and its geometrically decaying weight beta(step).

Scaling convention of the whole beta-VAE objective (used by `model.lightning.systems.vae`):

    loss = mean_B [ recon(x_hat, x) + beta(step) * KL(q(z|x) || N(0, I)) ]

with *both* terms per-element means per sample: `ReconstructionLoss` averages over the C*H*W image elements,
`kl_divergence(..., reduction="mean")` (the default) averages over the d = C_z*H_z*W_z latent elements. So beta
weighs "nats per latent element" against "reconstruction error per pixel": it does not change meaning when the
image size or latent size changes. In terms of the summed objective of Higgins et al. (2017),
sum_pixels recon + beta_sum * sum_latents KL, this equals (1 / D) times it with beta_sum = beta * D / d
(D = C*H*W). `reduction="sum"` gives the summed KL for anyone who wants the summed form.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor


def kl_divergence(mean: Tensor, logvar: Tensor, reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, shape (B,).

    Kingma & Welling (2014), Auto-Encoding Variational Bayes, appendix B:
        KL = 1/2 * sum_j (mean_j^2 + sigma_j^2 - 1 - log sigma_j^2).
    `reduction="mean"` (default) divides the sum by the number of latent elements per sample (see the module
    docstring for why); `"sum"` returns the plain sum over all latent dimensions.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)  # (B, C_z, H_z, W_z)
    kl = kl.flatten(1)  # (B, d)
    if reduction == "mean":
        return kl.mean(dim=1)
    if reduction == "sum":
        return kl.sum(dim=1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def beta_at(step: int, beta_start: float, kl_factor: float, beta_decay_period: int, beta_min: float) -> float:
    """KL weight at optimiser step `step`: max(beta_min, beta_start * kl_factor ** (step / beta_decay_period)).

    Continuous geometric decay (the sheet-001 beta-VAE multiplies beta by kl_factor once per period; this is the
    same curve without the staircase). A pure function of the global step, so a resumed run continues exactly.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if beta_decay_period <= 0:
        raise ValueError(f"beta_decay_period must be > 0, got {beta_decay_period}")
    if not 0 < kl_factor <= 1:
        raise ValueError(f"kl_factor must be in (0, 1], got {kl_factor}")
    return max(beta_min, beta_start * kl_factor ** (step / beta_decay_period))  # underflows to 0.0, never raises
