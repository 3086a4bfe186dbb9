"""The VAE's optional adversarial loss: a patch discriminator with the hinge loss and the adaptive weight of
Esser et al. 2021 ("Taming Transformers", eq. 7), as in the autoencoders of latent diffusion (Rombach et al. 2022).

A patch discriminator (Isola et al. 2017) scores overlapping patches rather than the whole image, so it judges local
texture and sharpness, which an L1 or SSIM reconstruction loss leaves blurry. Its loss is the hinge

    L_D = ½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))]),     L_G = −E[D(x̂)],

and the decoder's loss adds λ·L_G with λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_G‖ + δ), the gradients taken at the decoder's
last layer G_L, so the adversarial pull never outweighs the reconstruction's (clamped to [0, 10⁴], no gradient).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

KERNEL, PADDING = 4, 1  # every convolution of the patch discriminator
DELTA = 1e-4  # δ of the adaptive weight: keeps λ finite while the adversarial gradient is ~0
MAX_WEIGHT = 1e4  # the clamp of Esser et al.'s implementation


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) images -> (B, 1, H', W') logits, one per patch: `layers` 4×4 stride-2 convolutions (widths
    base·2^i, at most 8·base), one stride-1 convolution and a 1-channel stride-1 head, LeakyReLU(0.2) between.

    No normalisation layers, unlike the original's BatchNorm: each logit then depends on its own patch only (any
    normalisation over the image or the batch mixes them), and no batch statistics can differ between DDP ranks or
    between training and evaluation."""

    def __init__(self, in_channels: int, base_channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        widths = [base_channels * min(2 ** i, 8) for i in range(layers + 1)]
        strides = conv_strides(layers)
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], KERNEL, strides[0], PADDING), nn.LeakyReLU(0.2)]
        for i in range(1, layers + 1):
            blocks += [nn.Conv2d(widths[i - 1], widths[i], KERNEL, strides[i], PADDING), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(widths[-1], 1, KERNEL, strides[-1], PADDING))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():  # DCGAN initialisation, as in pix2pix and taming
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def frozen(self, x: Tensor) -> Tensor:
        """D(x) with the weights detached: the generator's loss sends gradients to x only, never to D."""
        params = {name: p.detach() for name, p in self.named_parameters()}
        return functional_call(self, params, (x,))


def conv_strides(layers: int) -> list[int]:
    """The strides of the `layers + 2` convolutions: `layers` halvings, then the stride-1 layer and the head."""
    return [2] * layers + [1, 1]


def patch_grid(size: int, layers: int) -> int:
    """The side of the logit grid for `size`-px images; 0 when the image shrinks below a kernel on the way."""
    for stride in conv_strides(layers):
        if size + 2 * PADDING < KERNEL:
            return 0
        size = (size + 2 * PADDING - KERNEL) // stride + 1
    return size


def deepest_fitting(size: int) -> int:
    """The largest `layers` whose stack fits `size`-px images (0: not even one)."""
    layers = 0
    while patch_grid(size, layers + 1) > 0:
        layers += 1
    return layers


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """L_D = ½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂))): 0 once real scores ≥ 1 and fake ones ≤ −1."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: Tensor) -> Tensor:
    """L_G = −mean D(x̂): the decoder is pushed towards what D scores as real."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
    """λ = ‖∇ rec_loss‖ / (‖∇ g_loss‖ + δ) at `last_layer`, clamped to [0, 10⁴] and detached (a scalar)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + DELTA)).clamp(0.0, MAX_WEIGHT).detach()
