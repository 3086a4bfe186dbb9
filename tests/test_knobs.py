"""Memory and speed knobs give the same outputs and gradients as without them: gradient checkpointing,
channels_last, torch.compile (`unet.gradient_checkpointing`, `trainer.channels_last`, `trainer.compile`)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.denoiser import ConvNeXtUNet, UNetConfig

CFG = UNetConfig(in_channels=4, base_channels=16, channel_mult=[1, 2], blocks_per_level=1, attention_levels=[1],
                 num_heads=2, num_classes=3, layer_scale_init=0.5)  # a large layer scale: every block matters


def outputs_and_grads(net: torch.nn.Module, memory_format=torch.contiguous_format):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 8, 8, generator=g).contiguous(memory_format=memory_format)
    t, c = torch.tensor([1, 200, 500, 999]), torch.tensor([0, 1, 2, 3])
    out = net(x, t, c)
    (out.square().mean() + out.mean()).backward()
    return out.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}


def twin(cfg: UNetConfig) -> ConvNeXtUNet:
    torch.manual_seed(0)
    return ConvNeXtUNet(cfg)


def assert_same(a, b, tol: float) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=tol, atol=tol, msg=name)


def test_gradient_checkpointing_recomputes_the_same_outputs_and_gradients():
    plain = outputs_and_grads(twin(CFG))
    checkpointed_net = twin(dataclasses.replace(CFG, gradient_checkpointing=True))
    assert_same(outputs_and_grads(checkpointed_net), plain, tol=1e-6)
    with torch.no_grad():  # sampling: no recomputation, the same function
        x = torch.randn(2, 4, 8, 8)
        assert torch.equal(checkpointed_net(x, torch.tensor([3, 4])), twin(CFG)(x, torch.tensor([3, 4])))


def test_channels_last_gives_the_same_outputs_and_gradients():
    plain = outputs_and_grads(twin(CFG))
    net = twin(CFG).to(memory_format=torch.channels_last)
    assert_same(outputs_and_grads(net, torch.channels_last), plain, tol=1e-5)


@pytest.mark.slow
def test_torch_compile_gives_the_same_outputs_and_gradients():
    plain = outputs_and_grads(twin(CFG))
    net = twin(CFG)
    net.compile()
    assert_same(outputs_and_grads(net), plain, tol=1e-5)
    assert net.state_dict().keys() == twin(CFG).state_dict().keys()  # in place: checkpoints keep their keys


# ---- the VAE (stage 1): channels_last and compile apply to it too ---------------------------------------------
def vae_twin():
    from model.autoencoder import BetaVAE, VAEConfig

    torch.manual_seed(0)
    return BetaVAE(VAEConfig(in_channels=1, base_channels=8, channel_mult=[1, 2], latent_channels=4, norm_groups=4))


def vae_outputs_and_grads(vae: torch.nn.Module, memory_format=torch.contiguous_format):
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=memory_format)
    # z = the posterior mean: compiled code draws its noise from inductor's own generator, not torch.randn's stream
    x_hat, mean, logvar, _ = vae(x, sample=False)
    (x_hat.square().mean() + mean.mean() + logvar.mean()).backward()
    return x_hat.detach(), {name: p.grad.clone() for name, p in vae.named_parameters()}


def test_the_vae_in_channels_last_gives_the_same_outputs_and_gradients():
    plain = vae_outputs_and_grads(vae_twin())
    vae = vae_twin().to(memory_format=torch.channels_last)
    assert_same(vae_outputs_and_grads(vae, torch.channels_last), plain, tol=1e-5)


@pytest.mark.slow
def test_the_compiled_vae_gives_the_same_outputs_and_gradients():
    plain = vae_outputs_and_grads(vae_twin())
    vae = vae_twin()
    vae.compile()
    assert_same(vae_outputs_and_grads(vae), plain, tol=1e-5)


def test_the_fused_adamw_takes_the_per_tensor_loops_steps():
    """optim.fused picks torch's fused AdamW on a CPU: from the same gradients, the loop's steps."""
    from model.config import OptimConfig
    from model.optim import adamw_with_warmup

    nets = {"fused": twin(CFG), "loop": twin(CFG)}
    fused = adamw_with_warmup(nets["fused"].parameters(), OptimConfig(lr=1e-2, warmup_steps=1, fused=True),
                              10)["optimizer"]
    assert not adamw_with_warmup(twin(CFG).parameters(), OptimConfig(), 10)["optimizer"].defaults["fused"]
    loop = torch.optim.AdamW(nets["loop"].parameters(), lr=1e-2, betas=fused.defaults["betas"],
                             weight_decay=fused.defaults["weight_decay"], foreach=False)
    assert fused.defaults["fused"] is True
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in nets["loop"].parameters()]
        for name, opt in (("fused", fused), ("loop", loop)):
            for p, grad in zip(nets[name].parameters(), grads):
                p.grad = grad.clone()
            opt.step()
    moved = max((a - b).abs().max() for a, b in zip(nets["fused"].parameters(), twin(CFG).parameters()))
    assert moved > 1e-3  # the steps moved the weights: equal weights below mean equal updates
    for a, b in zip(nets["fused"].parameters(), nets["loop"].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
