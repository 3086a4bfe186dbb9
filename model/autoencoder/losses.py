"""Reconstruction losses of the beta-VAE: L1, MSE, SSIM, YCbCr (luma SSIM + chroma L1) and LPIPS.

Every term maps (x_hat, x), both (B, C, H, W) in [-1, 1], to a per-sample value of shape (B,) that is a mean
over the image (L1/MSE: over C*H*W elements; SSIM: the mean over the SSIM map, as torchmetrics'; LPIPS: the
spatially averaged distance). Together with the per-latent-element mean of `kl_divergence` this keeps beta
independent of image and latent size (see `model.autoencoder.kl`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from model.autoencoder.config import SSIM_MIN_SIZE, SSIM_WINDOW, LossConfig
from model.errors import UserError

# ITU-R BT.601 luma weights with JPEG/JFIF full-range chroma (rows: Y, Cb, Cr; columns: R, G, B).
# Y's row sums to 1 and the chroma rows sum to 0, so applied to RGB in [-1, 1] it gives Y in [-1, 1] and
# Cb, Cr in [-1, 1] centred at 0 (the usual +0.5 chroma offset of [0, 1] data cancels out).
BT601 = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """RGB (B, 3, H, W) in [-1, 1] -> YCbCr (B, 3, H, W): Y in [-1, 1], Cb and Cr in [-1, 1], grey -> Cb = Cr = 0."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_ycbcr expects (B, 3, H, W), got {tuple(x.shape)}")
    m = torch.tensor(BT601, dtype=x.dtype, device=x.device)  # (3, 3)
    return torch.einsum("ij,bjhw->bihw", m, x)  # (B, 3, H, W)


def l1_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """mean |x_hat - x| per sample, (B,)."""
    return (x_hat - x).abs().flatten(1).mean(dim=1)


def mse_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """mean (x_hat - x)^2 per sample, (B,)."""
    return (x_hat - x).pow(2).flatten(1).mean(dim=1)


SSIM_SIGMA = 1.5  # the window's width, as torchmetrics builds it
SSIM_K1, SSIM_K2 = 0.01, 0.03


def gaussian_blur_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n, n) matrix A with A @ v = the SSIM window's 1-D Gaussian pass over v after reflect padding: the same
    operator as torchmetrics' reflect pad + 11-tap window (sigma 1.5) + valid convolution along one axis."""
    if n < SSIM_MIN_SIZE:  # the config refuses such images first (check_vae_shapes); this guards direct calls
        raise UserError(f"vae.loss.ssim and vae.loss.ycbcr need images of at least {SSIM_MIN_SIZE} px a side, got "
                        f"{n}; set them to 0")
    half = SSIM_WINDOW // 2
    d = torch.arange(SSIM_WINDOW, dtype=torch.float64) - half
    g = torch.exp(-0.5 * (d / SSIM_SIGMA) ** 2)
    g = g / g.sum()  # (window,)
    source = torch.arange(n)[:, None] + torch.arange(SSIM_WINDOW) - half  # (n, window): padded index each tap reads
    source = source.abs()  # reflect at the start: -k -> k
    source = torch.where(source > n - 1, 2 * (n - 1) - source, source)  # and at the end: n-1+k -> n-1-k
    a = torch.zeros(n, n, dtype=torch.float64).index_put_((torch.arange(n)[:, None].expand_as(source), source),
                                                          g.expand_as(source), accumulate=True)
    return a.to(device=device, dtype=dtype)


def ssim_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """1 - SSIM per sample, (B,) (Wang et al. 2004, eq. 13; 11x11 Gaussian window, sigma 1.5, data range 2 for
    images in [-1, 1], reflect padding, the mean over the whole SSIM map): torchmetrics' value, with which the tests
    compare it.

    The window is separable, so the blur is two matrix products, A_H @ m @ A_W^T, with the reflect padding folded
    into A: on a CPU, the backward pass of torchmetrics' 11x11 convolution made SSIM the largest cost of the digits
    VAE's training step (docs/benchmarks.md).
    """
    x_hat, x = x_hat.float(), x.float()
    a_h = gaussian_blur_matrix(x.shape[-2], x.dtype, x.device)
    a_w = a_h if x.shape[-1] == x.shape[-2] else gaussian_blur_matrix(x.shape[-1], x.dtype, x.device)  # square: one
    blurred = a_h @ torch.stack((x_hat, x, x_hat * x_hat, x * x, x_hat * x)) @ a_w.T  # (5, B, C, H, W)
    mu_p, mu_t, pp, tt, pt = blurred.unbind(0)
    var_p = (pp - mu_p * mu_p).clamp_min(0)  # non-negative, as torchmetrics clamps them
    var_t = (tt - mu_t * mu_t).clamp_min(0)
    cov = pt - mu_p * mu_t
    c1, c2 = (SSIM_K1 * 2.0) ** 2, (SSIM_K2 * 2.0) ** 2
    ssim = (2 * mu_p * mu_t + c1) * (2 * cov + c2) / ((mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2))
    return 1.0 - ssim.flatten(1).mean(1)  # (B,)


def ycbcr_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """(1 - SSIM(Y_hat, Y)) + mean |CbCr_hat - CbCr| per sample, (B,); grey images: 1 - SSIM on the channel.

    Structure is judged on luma, where the eye resolves detail; colour only needs to be right on average.
    """
    channels = x.shape[1]
    if channels == 1:
        return ssim_loss(x_hat, x)
    if channels != 3:
        raise UserError(f"vae.loss.ycbcr needs 1- or 3-channel images, got {channels} channels; set vae.loss.ycbcr 0")
    y_hat, y = rgb_to_ycbcr(x_hat), rgb_to_ycbcr(x)  # (B, 3, H, W) each
    return ssim_loss(y_hat[:, :1], y[:, :1]) + l1_loss(y_hat[:, 1:], y[:, 1:])


class ReconstructionLoss(nn.Module):
    """sum_k weight_k * term_k(x_hat, x) over the terms with weight > 0 in `LossConfig`.

    forward(x_hat, x) -> (total (B,), {name: unweighted term (B,)}) so each term can be logged.
    The LPIPS network is frozen and kept out of this module's parameters and state_dict (checkpoints stay small
    and do not depend on the loss settings); it follows the input's device on first use.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weights = cfg.weights()  # {name: weight}, switched-on terms only
        lpips_net = None
        if "lpips" in self.weights:
            from model.autoencoder.perceptual import build_lpips

            lpips_net = build_lpips(cfg.lpips_net, cfg.lpips_weights)
        object.__setattr__(self, "_lpips", lpips_net)  # bypass nn.Module registration on purpose

    def lpips_loss(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """LPIPS distance per sample, (B,); grey images are repeated to 3 channels."""
        net = self._lpips
        if net is None:
            raise RuntimeError("lpips_loss needs vae.loss.lpips > 0 when the loss is built")
        channels = x.shape[1]
        if channels == 1:
            x_hat, x = x_hat.expand(-1, 3, -1, -1), x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        elif channels != 3:
            raise UserError(
                f"vae.loss.lpips needs 1- or 3-channel images, got {channels} channels; set vae.loss.lpips 0"
            )
        if next(net.parameters()).device != x.device:
            net.to(x.device)
        net.eval()  # its linear layers have dropout; never train them
        try:
            return net(x_hat, x).reshape(x.shape[0])  # (B, 1, 1, 1) -> (B,)
        except RuntimeError as err:
            height, width = x.shape[-2:]
            if min(height, width) >= 64:
                raise
            raise UserError(  # AlexNet's stride-4 stem and pooling leave nothing of images smaller than 32x32
                f"vae.loss.lpips ('{self.cfg.lpips_net}') cannot handle {height}x{width} images; use images of at "
                f"least 32x32 or set vae.loss.lpips 0"
            ) from err

    def forward(self, x_hat: Tensor, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if x_hat.shape != x.shape:
            raise ValueError(f"x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} must have the same shape")
        fns = {"l1": l1_loss, "mse": mse_loss, "ssim": ssim_loss, "ycbcr": ycbcr_loss, "lpips": self.lpips_loss}
        terms = {name: fns[name](x_hat, x) for name in self.weights}  # {name: (B,)}
        total = sum(self.weights[name] * value.float() for name, value in terms.items())
        return total, terms  # (B,), {name: (B,)}
