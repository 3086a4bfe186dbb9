"""Text conditioning: byte tokens, cross-attention (starts as the identity, never reads padding), the one
`Conditioner` for labels and prompts (dropping both together), guidance with the empty and the negative prompt, a
frozen CLIP encoder read from a local folder, and a model trained here that draws the colour its prompt names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.conditioning import Condition, Conditioner, class_condition
from model.denoiser import ConvNeXtUNet, UNetConfig
from model.denoiser.prompted import PromptedNetwork
from model.denoiser.unet import CrossAttention2d
from model.errors import UserError
from model.text import ByteTextEncoder, ByteTokenizer, PretrainedTextEncoder, TextConfig, text_width
from model.text.byte_encoder import BOS, EOS, PAD
from tiny import DIGITS, digits_latent_shape
from tiny_text import COLOURS, colour_squares, text_run_args, tiny_clip


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn afresh, the zero-initialised output layers included (else they hide the prompt)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return module


def prompted_unet(num_classes: int = 0) -> PromptedNetwork:
    text = TextConfig(encoder="bytes", width=16, layers=1, heads=2, max_length=12)
    cfg = UNetConfig(in_channels=3, base_channels=8, channel_mult=[1, 2], num_heads=2, num_classes=num_classes,
                     cross_attention_levels=[1], context_dim=16)
    return randomise(PromptedNetwork(ConvNeXtUNet(cfg), ByteTextEncoder(text))).eval()


def test_byte_tokens_frame_every_prompt_with_bos_and_eos_and_cut_long_ones():
    tokens, mask = ByteTokenizer(6)(["", "hé", "a long prompt"])
    assert tokens[0].tolist() == [BOS, EOS, PAD, PAD, PAD, PAD] and mask[0].sum() == 2
    assert tokens[1, 1:4].tolist() == [b + 3 for b in "hé".encode()] and tokens[1, 4] == EOS
    assert tokens[2].tolist() == [BOS, *(b + 3 for b in b"a lo"), EOS] and bool(mask[2].all())


def test_cross_attention_starts_as_the_identity_and_never_reads_padding():
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 8, 4, 4, generator=gen), torch.randn(2, 5, 6, generator=gen)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    block = CrossAttention2d(8, 6, num_heads=2)
    assert torch.equal(block(x, context, mask), x)
    randomise(block)
    changed_padding = torch.where(mask[..., None], context, torch.randn(context.shape, generator=gen))
    assert torch.allclose(block(x, changed_padding, mask), block(x, context, mask), atol=1e-6)
    changed_token = context.clone()
    changed_token[:, 0] = torch.randn(2, 6, generator=gen)  # (a constant shift would vanish in its LayerNorm)
    assert (block(x, changed_token, mask) - block(x, context, mask)).abs().amax() > 1e-3


def test_the_unet_reads_the_prompt_and_networks_without_text_keep_their_weights():
    net = prompted_unet()
    x, t = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)).repeat(2, 1, 1, 1), torch.full((2,), 500.0)
    tokens = ByteTokenizer(12)(["a red heart", "a red heart"])[0]
    other = ByteTokenizer(12)(["flag: Japan", "flag: Japan"])[0]
    same, changed = net(x, t, Condition(tokens=tokens)), net(x, t, Condition(tokens=other))
    assert (same - changed).abs().amax() > 1e-3
    assert torch.equal(same[0], same[1])  # the same prompt and input give the same output in a batch
    with pytest.raises(ValueError, match="encoded prompt"):
        net.net(x, t, None)
    plain = ConvNeXtUNet(UNetConfig(in_channels=3, base_channels=8, channel_mult=[1, 2], num_heads=2))
    assert not [k for k in plain.state_dict() if "cross" in k or "context" in k]


def test_the_conditioner_gives_bare_labels_without_text_and_drops_label_and_prompt_together():
    y = torch.tensor([3, -1, 0, 9, 4, 4, 2, 1])
    torch.manual_seed(5)
    before = class_condition(y, 10, p_uncond=0.5)
    torch.manual_seed(5)
    assert torch.equal(Conditioner(10)(y, None, len(y), p_uncond=0.5), before)  # same labels, same random draws
    tokenizer = ByteTokenizer(12)
    prompts = [f"prompt {i}" for i in range(8)]
    kept = Conditioner(10, tokenizer)(y, prompts, 8)
    assert torch.equal(kept.tokens, tokenizer(prompts)[0]) and kept.labels.tolist() == [3, 10, 0, 9, 4, 4, 2, 1]
    dropped = Conditioner(10, tokenizer)(y, prompts, 8, p_uncond=1.0)
    assert torch.equal(dropped.tokens, tokenizer([""] * 8)[0]) and dropped.labels.tolist() == [10] * 8
    torch.manual_seed(0)
    half = Conditioner(10, tokenizer)(y, prompts, 8, p_uncond=0.5)
    empty_prompt = (half.tokens == tokenizer([""])[0]).all(1)
    assert torch.equal(empty_prompt | (y < 0), half.labels == 10) and 0 < int(empty_prompt.sum()) < 8


def test_guidance_mixes_the_prompt_with_the_empty_or_the_negative_prompt():
    from model import base

    net, conditioner = prompted_unet(num_classes=3), Conditioner(3, ByteTokenizer(12))
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)), torch.full((2,), 300.0)
    c = conditioner(torch.tensor([0, 2]), ["a red heart", "a blue heart"], 2)
    for negative in (None, ["blurry"]):
        uncond = conditioner.unconditional(2, negative)
        guided = base.classifier_free_guidance(net, 2.5, 3, uncond=uncond)(x, t, c)
        assert torch.allclose(guided, 3.5 * net(x, t, c) - 2.5 * net(x, t, uncond), atol=1e-5)
    empty, negative = (base.classifier_free_guidance(net, 2.5, 3, uncond=conditioner.unconditional(2, n))(x, t, c)
                       for n in (None, ["blurry"]))
    assert (empty - negative).abs().amax() > 1e-3
    assert conditioner.unconditional(2).labels.tolist() == [3, 3]
    with pytest.raises(ValueError, match="unconditional condition"):
        base.classifier_free_guidance(net, 2.5, 3)(x, t, c)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    return tiny_clip(tmp_path_factory.mktemp("clip") / "text_encoder")


def test_a_frozen_clip_encoder_from_a_local_folder_gives_its_last_hidden_state(clip_folder, tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    encoder = PretrainedTextEncoder(str(clip_folder))
    fields = encoder.condition(["a red heart", ""])
    ids = CLIPTokenizer.from_pretrained(clip_folder)(["a red heart", ""], padding="max_length", max_length=16,
                                                     return_tensors="pt")
    theirs = CLIPTextModel.from_pretrained(clip_folder)(**ids).last_hidden_state
    assert torch.allclose(fields["context"], theirs, atol=1e-6) and text_width(str(clip_folder)) == 32
    assert fields["mask"].sum(1).tolist() == [int(ids.attention_mask[0].sum()), 2]
    assert not any(p.requires_grad for p in encoder.model.parameters())
    with pytest.raises(UserError, match="config.json is missing.*save_pretrained layout"):
        PretrainedTextEncoder(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="CLIP text model or a T5 encoder"):
        PretrainedTextEncoder(str(tmp_path))


def test_text_settings_that_cannot_work_are_refused_with_the_fix():
    from model.cli_config import from_dict

    with pytest.raises(UserError, match="denoiser.text.path is not set"):
        TextConfig(encoder="pretrained")
    with pytest.raises(UserError, match="cross_attention_levels is set but denoiser.text.encoder is none"):
        from_dict({"denoiser": {"unet": {"cross_attention_levels": [1]}}})
    with pytest.raises(UserError, match="cross_attention_levels must be distinct levels"):
        UNetConfig(channel_mult=[1, 2], cross_attention_levels=[2])
    from model.config import check_denoiser_shapes

    cfg = from_dict({"denoiser": {"text": {"encoder": "bytes"}, "unet": {"cross_attention_levels": [1]}}})
    with pytest.raises(UserError, match="data.captions is false"):
        check_denoiser_shapes(cfg)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A pixel-space text-to-image model trained on coloured squares with the byte encoder (200 steps)."""
    from model.main import main

    tmp = tmp_path_factory.mktemp("text_run")
    root = colour_squares(tmp / "colours")
    assert main(["-cfg", DIGITS, "--train-denoiser", "-n", "1", *text_run_args(root, tmp / "runs")]) == 0
    return tmp / "runs" / "digits-1" / "denoiser" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_model_trained_on_captions_draws_the_colour_its_prompt_names(text_run, tmp_path):
    from model.pipeline import LatentDiffusionPipeline
    from model.scripts.sample import main as sample

    prompts = [f"a {name} square" for name in COLOURS]
    pipe = LatentDiffusionPipeline.from_pretrained(text_run)
    images = pipe(prompt=[p for p in prompts for _ in range(8)], cfg_scale=2.0, seed=0, steps=10)  # (24, 8, 8, 3)
    mean_colour = images.reshape(3, 8, -1, 3).mean(axis=(1, 2))  # (prompt, RGB)
    assert mean_colour.argmax(1).tolist() == [0, 1, 2], mean_colour  # red, green, blue: each prompt its channel
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n")
    assert sample(["--load", str(text_run), "--prompts-file", str(tmp_path / "prompts.txt"), "--per-prompt", "8",
                   "--cfg-scale", "2", "--steps", "10", "--output", str(tmp_path / "out")]) == 0
    written = np.load(tmp_path / "out" / "samples.npz")
    assert written["prompts"].tolist() == [p for p in prompts for _ in range(8)]
    assert np.array_equal(written["images"], images)  # the command and the pipeline draw the same from one seed
    from PIL import Image

    cells = (8 * (8 + 2) + 2) * 8  # 8 images of 8 px and their padding, enlarged 8 times
    assert Image.open(tmp_path / "out" / "grid.png").width > cells  # and the prompts left of them


def test_a_model_with_a_frozen_clip_encoder_trains_samples_and_keeps_clip_out_of_its_checkpoint(clip_folder,
                                                                                             tmp_path):
    from model.checkpoint import read_checkpoint
    from model.main import main
    from model.pipeline import LatentDiffusionPipeline

    root = colour_squares(tmp_path / "colours", per_colour=6)
    assert main(["-cfg", DIGITS, "--train-denoiser", "-n", "1",
                 *text_run_args(root, tmp_path / "runs", encoder="pretrained", steps=4,
                                **{"--denoiser.text.path": str(clip_folder)})]) == 0
    ckpt = tmp_path / "runs" / "digits-1" / "denoiser" / "checkpoints" / "last.ckpt"
    keys = read_checkpoint(ckpt, expected="denoiser")["state_dict"]
    assert keys and not [k for k in keys if "text_model" in k or "token_embedding" in k]  # CLIP's own keys
    pipe = LatentDiffusionPipeline.from_pretrained(ckpt)
    randomise(pipe.net)  # 4 steps leave the zero-initialised output layers near zero, which would hide the prompt
    red, blue = (pipe(2, prompt=p, seed=0, steps=4) for p in ("a red square", "a blue square"))
    assert not np.array_equal(red, blue)  # the prompt reaches the network through the frozen encoder
    assert np.array_equal(red, pipe(2, prompt="a red square", seed=0, steps=4))


def test_prompts_for_a_model_without_them_and_empty_prompt_files_are_one_line_errors(tiny_runs, tmp_path, capsys):
    from model.scripts.sample import main as sample

    assert sample(["--load", str(tiny_runs["latent"]), "--prompt", "a red heart"]) == 2
    assert "prompts need a model trained on prompts" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n\n")
    assert sample(["--load", str(tiny_runs["latent"]), "--prompts-file", str(tmp_path / "empty.txt")]) == 2
    assert "holds no prompt" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_prompt_counts_are_checked(text_run):
    from model.pipeline import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(text_run)
    with pytest.raises(UserError, match="2 negative prompts for 3 samples"):
        pipe(3, prompt="a red square", negative_prompt=["a", "b"])
    with pytest.raises(UserError, match="1 prompts for 3 samples"):
        pipe.generate(3, prompts=["a red square"])
    assert torch.equal(pipe.condition(None, ["x"]).tokens, ByteTokenizer(16)(["x"])[0])


def test_shuffled_captions_move_every_caption_to_another_image():
    from model.scripts.prompt_agreement import shuffled

    for n in (2, 3, 10, 101):
        perm = shuffled(n, seed=n)
        assert sorted(perm.tolist()) == list(range(n)) and not bool((perm == torch.arange(n)).any())


def test_classes_from_a_metadata_field(tmp_path):
    from data import make_datamodule
    from data.config import DataConfig

    root = colour_squares(tmp_path / "colours", per_colour=4)
    for name in COLOURS:  # one flat folder: the sub-folders can no longer give the classes
        for png in (root / name).glob("*.png"):
            png.rename(root / f"{name}-{png.name}")
    lines = (root / "metadata.jsonl").read_text().replace('/', '-')
    (root / "metadata.jsonl").write_text(lines)
    dm = make_datamodule(DataConfig(name="folder", root=str(root), image_size=8, channels=3, batch_size=2,
                                    label_field="colour", val_fraction=0.0))
    dm.setup()
    assert dm.class_names == ["blue", "green", "red"]
    assert [dm.class_names[y] for y in dm._labels] == [p.split("/")[-1].split("-")[0] for p in dm._paths]
    (root / "metadata.jsonl").write_text(lines.replace('"colour": "red"', '"colour": ""'))
    with pytest.raises(UserError, match="4 images have no 'colour'"):
        make_datamodule(DataConfig(name="folder", root=str(root), image_size=8, channels=3, batch_size=2,
                                   label_field="colour")).setup()
    with pytest.raises(UserError, match="data.label_field .* needs data.name folder and data.labels true"):
        DataConfig(name="folder", root=str(root), labels=False, label_field="colour")


@pytest.mark.slow
def test_prompt_agreement_sits_between_chance_and_the_real_floor(text_run, tmp_path):
    import json

    from model.scripts import prompt_agreement, train_classifier

    root = text_run.parents[3].parent / "colours"
    clf = tmp_path / "colour.pt"
    assert train_classifier.main(["-cfg", DIGITS, *text_run_args(root, tmp_path), "--data.labels", "true",
                                  "--data.label_field", "colour", "--data.captions", "false", "--epochs", "3",
                                  "--output", str(clf)]) == 0
    assert prompt_agreement.main(["--load", str(text_run), "--classifier", str(clf), "--label-field", "colour",
                                  "--cfg-scale", "0", "2", "--steps", "10", "--real-pool", "90",
                                  "--output", str(tmp_path / "agreement")]) == 0
    report = json.loads((tmp_path / "agreement" / "report.json").read_text())
    assert report["floor"]["agreement"] == 1.0 and report["floor"]["chance"] < 0.6  # 3 colours: chance about 1/3
    guided = report["scales"][1]
    assert guided["agreement"] > guided["chance"] + 0.3, report["scales"]
    from model.metrics.budget import FLOOR

    assert [r["row"] for r in report["pixel_budget"]["rows"]] == ["w=0", "w=2", FLOOR]
    assert (tmp_path / "agreement" / "grid.png").is_file()


def test_latents_on_disk_keep_their_captions_and_a_text_model_trains_on_them(tmp_path):
    import json

    from data import make_datamodule
    from data.config import DataConfig
    from model.checkpoint import read_checkpoint
    from model.main import main
    from model.scripts.encode_latents import main as encode

    root = colour_squares(tmp_path / "colours", per_colour=8)
    colour = text_run_args(root, tmp_path / "runs", steps=2)
    assert main(["-cfg", DIGITS, "--train-vae", "-n", "1", *colour, "--vae.trainer.max_steps", "2",
                 "--vae.trainer.batch_size", "16", "--vae.trainer.progress_bar", "false",
                 "--vae.trainer.images_every_n_steps", "0"]) == 0
    vae = tmp_path / "runs" / "digits-1" / "vae" / "checkpoints" / "last.ckpt"
    assert encode(["-cfg", DIGITS, *colour, "--load-vae", str(vae), "--output", str(tmp_path / "lat"),
                   "--shard-size", "10"]) == 0
    meta = json.loads((tmp_path / "lat" / "meta.json").read_text())
    texts = [t for s in meta["splits"]["train"]["shards"]
             for t in torch.load(tmp_path / "lat" / s["file"], weights_only=True)["text"]]
    images = make_datamodule(DataConfig(name="folder", root=str(root), image_size=8, channels=3, captions=True,
                                        labels=False, batch_size=16))
    assert meta["captions"] and texts == images.captions("train")  # every latent beside its own caption
    latents = make_datamodule(DataConfig(name="latents", root=str(tmp_path / "lat"), captions=True, batch_size=4))
    latents.setup()
    assert [item[2] for item in latents.train_set] == texts
    assert main(["-cfg", DIGITS, "--train-denoiser", "-n", "2", *colour, "--load-vae", str(vae),
                 "--data.name", "latents", "--data.root", str(tmp_path / "lat"), "--denoiser.autoencoder", "vae",
                 "--denoiser.unet.in_channels", str(digits_latent_shape(8)[0])]) == 0
    state = read_checkpoint(tmp_path / "runs" / "digits-2" / "denoiser" / "checkpoints" / "last.ckpt",
                            expected="denoiser")["state_dict"]
    assert "net.encoder.embed.weight" in state  # the byte encoder trained with the network
    with pytest.raises(UserError, match="encoded without captions"):
        meta["captions"] = False
        (tmp_path / "lat" / "meta.json").write_text(json.dumps(meta))
        make_datamodule(DataConfig(name="latents", root=str(tmp_path / "lat"), captions=True))


@pytest.mark.slow
@pytest.mark.parametrize("inpaint", [False, True])
def test_reimagine_and_inpainting_follow_the_prompt(text_run, tmp_path, inpaint):
    from PIL import Image

    from model.scripts import reimagine

    column = 4 if inpaint else 3  # DDIM's cell: original, (mask, masked input | noised), DDPM, DDIM
    if inpaint:
        Image.new("L", (8, 8), 255).save(tmp_path / "all.png")  # regenerate every pixel
    colours = {}
    for name in ("red", "blue"):
        out = tmp_path / name
        extra = ["--mask", str(tmp_path / "all.png")] if inpaint else ["--strengths", "1.0"]
        assert reimagine.main(["--load", str(text_run), "--index", "0", "--ddim-steps", "10", "--cfg-scale", "2",
                               "--prompt", f"a {name} square", "--output", str(out), *extra]) == 0
        grid = np.asarray(Image.open(out / ("inpaint.png" if inpaint else "reimagine.png")).convert("RGB"))
        x0 = 2 + column * 10
        colours[name] = grid[2:10, x0: x0 + 8].reshape(-1, 3).mean(0)
    assert colours["red"].argmax() == 0 and colours["blue"].argmax() == 2, colours


def test_a_sampler_encodes_the_prompt_once_not_at_every_step():
    from model import base
    from model.denoising import Denoiser
    from model.sampling import SamplerSpec

    net, conditioner = prompted_unet(), Conditioner(0, ByteTokenizer(12))
    calls = []
    net.encoder.register_forward_hook(lambda *_: calls.append(1))
    c, uncond = conditioner(None, ["a red heart", "flag: Japan"], 2), conditioner.unconditional(2)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    spec, schedule = SamplerSpec("ddim", steps=8, guidance=2.0), base.make_schedule("cosine", 100)
    once = Denoiser(net, schedule, "v").sample(x_T, c, spec, uncond=uncond)
    assert len(calls) == 2  # the prompt and the empty prompt, each once for all 8 steps
    every_step = Denoiser(lambda x, t, cond: net(x, t, cond), schedule, "v").sample(x_T, c, spec, uncond=uncond)
    assert len(calls) == 2 + 8 and torch.allclose(once, every_step, atol=1e-5)
