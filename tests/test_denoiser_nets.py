"""Tests of the denoiser networks (model/denoiser): shapes, conditioning, null class, gradients, embeddings.

Tiny widths keep the whole file fast on CPU. The UNet's output conv is zero-initialised (its initial output is
exactly 0) and its layer scales start at 1e-6, so tests of input dependence move both first (`perturb_output`);
otherwise they could not fail.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.denoiser import (
    NETWORKS,
    ClassEmbedding,
    ConvNeXtBlock,
    ConvNeXtUNet,
    Downsample,
    SelfAttention2d,
    TimeEmbedding,
    Upsample,
    ToyMLP,
    ToyMLPConfig,
    UNetConfig,
    build_network,
    sinusoidal_embedding,
)
from model.denoiser.unet import depthwise, padded_depthwise
from model.errors import UserError



def tiny_unet_config(**overrides) -> UNetConfig:
    """A UNet small enough for CPU tests: width 8, 2 levels, 1 block, 2 heads."""
    fields = dict(in_channels=4, base_channels=8, channel_mult=[1, 2], blocks_per_level=1, num_heads=2)
    fields.update(overrides)
    return UNetConfig(**fields)


def perturb_output(net: nn.Module, seed: int = 0) -> None:
    """Move the UNet away from its near-identity init so the output visibly depends on x, t and c.

    The output conv starts at exactly 0 (random weights instead) and every layer scale gamma at 1e-6, which
    scales each block's (and hence the embedding's) contribution by 1e-6 (gamma = 0.5 instead).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.out_conv.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for module in net.modules():
            if isinstance(module, ConvNeXtBlock):
                module.gamma.fill_(0.5)


def times(batch: int, value: int | None = None) -> torch.Tensor:
    if value is not None:
        return torch.full((batch,), value, dtype=torch.long)
    return torch.arange(batch, dtype=torch.long) * 97 % 1000


# ---------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_closed_form():
    # t = 0: every sine is 0 and every cosine is 1
    emb0 = sinusoidal_embedding(torch.zeros(3, dtype=torch.long), 8)
    assert emb0.shape == (3, 8)
    torch.testing.assert_close(emb0[:, :4], torch.zeros(3, 4))
    torch.testing.assert_close(emb0[:, 4:], torch.ones(3, 4))
    # t = 1, dim = 4: half = 2, frequencies 10000^(-0/2) = 1 and 10000^(-1/2) = 0.01
    emb1 = sinusoidal_embedding(torch.tensor([1]), 4)
    expected = torch.tensor([[math.sin(1.0), math.sin(0.01), math.cos(1.0), math.cos(0.01)]])
    torch.testing.assert_close(emb1, expected)
    # odd dim pads one zero column; max_period changes the frequencies
    emb_odd = sinusoidal_embedding(torch.tensor([5, 7]), 5)
    assert emb_odd.shape == (2, 5) and torch.all(emb_odd[:, -1] == 0)
    emb_p = sinusoidal_embedding(torch.tensor([3]), 4, max_period=100.0)  # frequencies 1 and 0.1
    torch.testing.assert_close(emb_p[0, 1], torch.tensor(math.sin(0.3)))


def test_sinusoidal_embedding_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(B,\)"):
        sinusoidal_embedding(torch.zeros(2, 2), 8)


def test_time_embedding_shape_and_dependence():
    emb = TimeEmbedding(16, 32)
    out = emb(torch.tensor([0, 10, 999]))
    assert out.shape == (3, 32)
    assert not torch.allclose(out[0], out[1])


def test_class_embedding_null_class_and_validation():
    emb = ClassEmbedding(5, 6)
    assert emb.null_class == 5 and emb.embedding.num_embeddings == 6
    torch.testing.assert_close(emb(None, batch_size=3), emb(torch.full((3,), 5)))
    assert not torch.allclose(emb(torch.tensor([0])), emb(torch.tensor([1])))
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        emb(torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        emb(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="integer"):
        emb(torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------- UNet shapes


@pytest.mark.parametrize(
    "channels,size,mult,blocks,attention",
    [
        (1, 8, [1, 2], 1, []),
        (3, 16, [1, 2, 2], [1, 2, 1], [2]),
        (4, 8, [1, 2, 2], 2, [1, 2]),
        (8, 32, [1, 2], [2, 1], [0]),
        (4, 16, [1, 1, 2], 1, []),
        (3, 32, [1, 2, 2], 1, [2]),
    ],
)
def test_unet_output_shape_matches_input(channels, size, mult, blocks, attention):
    cfg = tiny_unet_config(in_channels=channels, channel_mult=mult, blocks_per_level=blocks, attention_levels=attention)
    net = ConvNeXtUNet(cfg)
    x = torch.randn(2, channels, size, size)
    out = net(x, times(2))
    assert out.shape == x.shape
    torch.testing.assert_close(out, torch.zeros_like(out))  # zero-initialised output conv
    perturb_output(net)
    out = net(x, times(2))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0


def test_unet_non_square_input():
    net = ConvNeXtUNet(tiny_unet_config(channel_mult=[1, 2, 2]))
    x = torch.randn(1, 4, 8, 16)
    assert net(x, times(1)).shape == x.shape


@pytest.mark.parametrize("size", [(6, 8), (8, 10), (7, 7)])
def test_unet_bad_spatial_size_raises(size):
    net = ConvNeXtUNet(tiny_unet_config(channel_mult=[1, 2, 2]))  # needs multiples of 4
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(levels-1\) = 4"):
        net(torch.randn(1, 4, *size), times(1))


def test_unet_bad_channels_and_batch_raise():
    net = ConvNeXtUNet(tiny_unet_config())
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        net(torch.randn(1, 3, 8, 8), times(1))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.randn(2, 4, 8, 8), times(3))


# ---------------------------------------------------------------- conditioning


def test_unet_time_dependence():
    net = ConvNeXtUNet(tiny_unet_config())
    perturb_output(net)
    x = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([3, 700]))
    assert not torch.allclose(out[0], out[1], atol=1e-6)
    # same t -> same output (no hidden randomness in eval mode)
    net.eval()
    torch.testing.assert_close(net(x, times(2, 5)), net(x, times(2, 5)))


def test_unet_unconditional_ignores_c():
    net = ConvNeXtUNet(tiny_unet_config(num_classes=0))
    perturb_output(net)
    assert net.class_embed is None and net.null_class is None
    x, t = torch.randn(2, 4, 8, 8), times(2)
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.tensor([0, 1])))


def test_unet_null_class_path():
    net = ConvNeXtUNet(tiny_unet_config(num_classes=3))
    perturb_output(net)
    assert net.null_class == 3
    x, t = torch.randn(2, 4, 8, 8), times(2)
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.full((2,), 3)))
    assert not torch.allclose(net(x, t, None), net(x, t, torch.zeros(2, dtype=torch.long)), atol=1e-6)


def test_unet_different_classes_give_different_outputs():
    net = ConvNeXtUNet(tiny_unet_config(num_classes=4))
    perturb_output(net)
    with torch.no_grad():
        net.class_embed.embedding.weight.normal_(0.0, 1.0)
    x = torch.randn(1, 4, 8, 8).expand(4, -1, -1, -1)
    out = net(x, times(4, 50), torch.arange(4))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(out[i], out[j], atol=1e-6)


def test_unet_class_bias_starts_as_the_plain_unet_and_acts_per_class_and_position():
    plain = ConvNeXtUNet(tiny_unet_config(num_classes=3))
    perturb_output(plain)
    biased = ConvNeXtUNet(tiny_unet_config(num_classes=3, class_bias_size=8))
    missing, unexpected = biased.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["class_bias"] and not unexpected and biased.class_bias.shape == (4, 8, 8, 8)
    x, t, c = torch.randn(3, 4, 8, 8), times(3), torch.tensor([0, 1, 2])
    torch.testing.assert_close(biased(x, t, c), plain(x, t, c))  # zero maps: exactly the plain network
    with torch.no_grad():
        biased.class_bias[1, :, 2, 5] = 1.0  # class 1, one position
    out = biased(x, t, c)
    torch.testing.assert_close(out[[0, 2]], plain(x, t, c)[[0, 2]])  # the other classes do not see it
    assert not torch.allclose(out[1], plain(x, t, c)[1], atol=1e-6)
    torch.testing.assert_close(biased(x, t, None), plain(x, t, None))  # c = None reads the null class's map
    with torch.no_grad():
        biased.class_bias.zero_()
        biased.class_bias[1, :, 5, 2] = 1.0  # the same bias at another position: another output
    assert not torch.allclose(biased(x, t, c)[1], out[1], atol=1e-6)
    with pytest.raises(ValueError, match="class bias"):
        biased(torch.randn(1, 4, 4, 4), times(1), torch.tensor([0]))


def test_unet_class_bias_gradients_are_the_same_bits_every_time():
    """Same seed, same threads, same weights: the maps' gradient is summed in a fixed order (an embedding lookup;
    indexing's backward adds the rows of one class in whatever order the threads reach them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        net = ConvNeXtUNet(tiny_unet_config(num_classes=10, class_bias_size=4))
        perturb_output(net)
        gen = torch.Generator().manual_seed(0)
        x, c = torch.randn(512, 4, 4, 4, generator=gen), torch.randint(0, 11, (512,), generator=gen)
        grads = []
        for _ in range(8):
            net.zero_grad()
            net(x, times(512), c).square().sum().backward()
            grads.append(net.class_bias.grad.clone())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@pytest.mark.parametrize("resample", ["conv", "patch"])
def test_resampling_layers_shapes_and_reach(resample):
    """"patch" maps each 2x2 patch to one position and back, nothing else; "conv"'s 3x3 kernels reach neighbours."""
    down, up = Downsample(4, 6, resample), Upsample(6, 4, resample)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert down(x).shape == (2, 6, 4, 4)
    down(x)[:, :, 1, 2].sum().backward()  # which inputs reach output position (1, 2)
    reach = x.grad.abs().sum((0, 1)) > 0
    patch = torch.zeros(8, 8, dtype=torch.bool)
    patch[2:4, 4:6] = True
    assert torch.equal(reach, patch) == (resample == "patch")
    assert reach[patch].all()
    h = torch.randn(2, 6, 4, 4, requires_grad=True)
    assert up(h).shape == (2, 4, 8, 8)
    up(h)[:, :, 2, 5].sum().backward()  # output (2, 5) lies in the patch of position (1, 2)
    reach_up = h.grad.abs().sum((0, 1)) > 0
    assert reach_up[1, 2] and (reach_up.sum() == 1) == (resample == "patch")


def test_unet_with_patch_resampling_and_without_mid_attention_runs_and_trains():
    net = ConvNeXtUNet(tiny_unet_config(num_classes=3, resample="patch", mid_attention=False))
    perturb_output(net)
    assert isinstance(net.mid_attention, nn.Identity) and net.downsamples[0].conv.kernel_size == (2, 2)
    x = torch.randn(2, 4, 8, 8)
    out = net(x, times(2), torch.tensor([0, 2]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_unet_without_mid_attention_is_the_unet_whose_attention_adds_nothing():
    with_attention = ConvNeXtUNet(tiny_unet_config(num_classes=3))
    perturb_output(with_attention)
    with torch.no_grad():  # SelfAttention2d is x + proj(...): a zero projection makes it the identity
        with_attention.mid_attention.proj.weight.zero_()
        with_attention.mid_attention.proj.bias.zero_()
    without = ConvNeXtUNet(tiny_unet_config(num_classes=3, mid_attention=False))
    missing, unexpected = without.load_state_dict(with_attention.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("mid_attention.") for k in unexpected)
    x, t, c = torch.randn(3, 4, 8, 8), times(3), torch.tensor([0, 1, 2])
    torch.testing.assert_close(without(x, t, c), with_attention(x, t, c))
    # no attention anywhere: the widths need not be divisible by num_heads
    assert tiny_unet_config(base_channels=6, num_heads=5, mid_attention=False).widths == [6, 12]


def test_unet_rejects_out_of_range_class():
    net = ConvNeXtUNet(tiny_unet_config(num_classes=3))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        net(torch.randn(2, 4, 8, 8), times(2), torch.tensor([0, 4]))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("num_classes,c,bias", [(0, None, 0), (3, None, 0), (3, "labels", 0), (3, "labels", 8)])
def test_unet_gradients_reach_every_parameter(num_classes, c, bias):
    # DDP with find_unused_parameters=False needs every parameter to take part in the loss
    net = ConvNeXtUNet(tiny_unet_config(num_classes=num_classes, channel_mult=[1, 2], attention_levels=[0],
                                        class_bias_size=bias))
    perturb_output(net)
    labels = torch.tensor([0, 2]) if c == "labels" else None
    out = net(torch.randn(2, 4, 8, 8), times(2), labels)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    names = [name for name, _ in net.named_parameters()]
    assert any(n.startswith("class_embed") for n in names) == (num_classes > 0)
    assert ("class_bias" in names) == (bias > 0)


# ---------------------------------------------------------------- blocks


def test_convnext_block_shapes_and_identity_start():
    block = ConvNeXtBlock(8, 8, embed_dim=16, layer_scale_init=1e-6)
    x = torch.randn(2, 8, 4, 4)
    out = block(x, torch.randn(2, 16))
    assert out.shape == x.shape
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)  # gamma = 1e-6: the block starts near identity
    wider = ConvNeXtBlock(8, 12, embed_dim=16)
    assert wider(x, torch.randn(2, 16)).shape == (2, 12, 4, 4)


@pytest.mark.parametrize("size,kernel", [((2, 2), 3), ((1, 1), 3), ((1, 2), 3), ((2, 2), 7), ((2, 1), 5), ((4, 4), 3),
                                         ((3, 5), 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_padded_depthwise_is_the_convolution_with_its_gradients(size, kernel, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=6)
    x = torch.randn(3, 6, *size)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(3, 6, *size)
    runs = []
    for fn in (conv, lambda a: padded_depthwise(conv, a)):
        conv.zero_grad()
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        out.backward(grad_out)
        runs.append((out.detach(), leaf.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    for reference, ours in zip(*runs):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert conv.weight.grad.abs().sum() > 0 and runs[1][0].shape == x.shape


def test_depthwise_pads_beforehand_only_on_maps_of_at_most_2x2(monkeypatch):
    import model.denoiser.unet as unet

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    padded = []
    monkeypatch.setattr(unet, "padded_depthwise", lambda c, x: padded.append(tuple(x.shape[-2:])) or conv(x))
    for size in [(1, 1), (2, 2), (2, 1), (3, 3), (2, 5), (4, 4)]:
        x = torch.randn(2, 4, *size)
        assert torch.equal(depthwise(conv, x), conv(x))
    assert padded == [(1, 1), (2, 2), (2, 1)]


def test_self_attention_shape_and_permutation_equivariance():
    attention = SelfAttention2d(8, num_heads=2)
    x = torch.randn(1, 8, 4, 4)
    out = attention(x)
    assert out.shape == x.shape
    # attention has no positional information: permuting the positions permutes the output the same way
    perm = torch.randperm(16)
    x_perm = x.flatten(2)[:, :, perm].reshape(1, 8, 4, 4)
    torch.testing.assert_close(attention(x_perm).flatten(2), out.flatten(2)[:, :, perm])
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention2d(6, num_heads=4)


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(in_channels=0), "denoiser.unet.in_channels"),
        (dict(base_channels=-1), "denoiser.unet.base_channels"),
        (dict(channel_mult=[]), "denoiser.unet.channel_mult"),
        (dict(channel_mult=[1, 0]), "denoiser.unet.channel_mult"),
        (dict(blocks_per_level=[1, 1, 1]), "denoiser.unet.blocks_per_level"),
        (dict(blocks_per_level=0), "denoiser.unet.blocks_per_level"),
        (dict(attention_levels=[2]), "denoiser.unet.attention_levels"),
        (dict(attention_levels=[1, 1]), "denoiser.unet.attention_levels"),
        (dict(num_heads=3), "denoiser.unet.num_heads"),
        (dict(num_classes=-1), "denoiser.unet.num_classes"),
        (dict(class_bias_size=-1, num_classes=3), "denoiser.unet.class_bias_size"),
        (dict(class_bias_size=8), "denoiser.unet.class_bias_size"),  # an unconditional network has no classes
        (dict(time_embed_dim=0), "denoiser.unet.time_embed_dim"),
        (dict(mlp_ratio=0), "denoiser.unet.mlp_ratio"),
        (dict(layer_scale_init=0.0), "denoiser.unet.layer_scale_init"),
        (dict(dropout=1.0), "denoiser.unet.dropout"),
        (dict(resample="pixelshuffle"), "denoiser.unet.resample"),
        (dict(base_channels=6, num_heads=5), "denoiser.unet.num_heads"),  # the middle's attention needs heads
    ],
)
def test_unet_config_validation(overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as info:
        tiny_unet_config(**overrides)
    assert "\n" not in str(info.value)


def test_unet_config_derived_values():
    cfg = UNetConfig(base_channels=32, channel_mult=[1, 2, 2], blocks_per_level=2)
    assert cfg.widths == [32, 64, 64] and cfg.blocks == [2, 2, 2] and cfg.levels == 3
    assert cfg.embed_dim == 128 and cfg.size_multiple == 4
    assert UNetConfig(time_embed_dim=48).embed_dim == 48


@pytest.mark.parametrize(
    "overrides,key",
    [(dict(dim=0), "denoiser.toy.dim"), (dict(hidden=0), "denoiser.toy.hidden"), (dict(depth=0), "denoiser.toy.depth"),
     (dict(num_classes=-2), "denoiser.toy.num_classes")],
)
def test_toy_config_validation(overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        ToyMLPConfig(**overrides)


# ---------------------------------------------------------------- toy MLP


@pytest.mark.parametrize("dim,depth", [(2, 1), (2, 3), (3, 2)])
def test_toy_mlp_shapes(dim, depth):
    net = ToyMLP(ToyMLPConfig(dim=dim, hidden=16, depth=depth))
    x = torch.randn(5, dim)
    out = net(x, times(5))
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(5, dim + 1), times(5))


def test_toy_mlp_conditioning_and_gradients():
    net = ToyMLP(ToyMLPConfig(hidden=16, depth=2, num_classes=3))
    assert net.null_class == 3
    x = torch.randn(1, 2).expand(3, -1)
    t = times(3, 10)
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.full((3,), 3)))
    out = net(x, t, torch.arange(3))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    out_t = net(x, torch.tensor([0, 500, 999]), torch.zeros(3, dtype=torch.long))
    assert not torch.allclose(out_t[0], out_t[1])
    net(x, t, torch.tensor([0, 1, 3])).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_toy_mlp_unconditional_has_no_class_embedding():
    net = ToyMLP(ToyMLPConfig(hidden=16, depth=1))
    assert net.class_embed is None
    x, t = torch.randn(4, 2), times(4)
    torch.testing.assert_close(net(x, t), net(x, t, torch.zeros(4, dtype=torch.long)))


# ---------------------------------------------------------------- registry


def test_registry_builds_each_network():
    assert set(NETWORKS) == {"unet", "toy_mlp"}
    unet = build_network("unet", tiny_unet_config())
    toy = build_network("toy_mlp", ToyMLPConfig(hidden=8, depth=1))
    assert isinstance(unet, ConvNeXtUNet) and isinstance(toy, ToyMLP)
    with pytest.raises(UserError, match="unknown denoiser network"):
        build_network("transformer")
    with pytest.raises(UserError, match="UNetConfig"):
        build_network("unet", ToyMLPConfig())
