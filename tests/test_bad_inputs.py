"""The inventory of bad inputs: every command answers each with one line, exit code 2, no traceback.

Each case runs a real entry point (`main(argv)` of model.main or a script) and checks the answer's form and that
it names the problem. The checkpoints and data the cases need are made here, small.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.main import main as train_main
from model.scripts import (demo_report, encode_latents, evaluate, export, fetch_emoji, plots, prompt_agreement,
                           reimagine, sample, sample_vae, text2img, train_classifier)
from tiny import DIGITS, ROOT, digits_latent_shape, tiny

TINY = tiny(val_every=2) + ["--vae.trainer.max_steps", "2", "--denoiser.trainer.max_steps", "2"]
COMMANDS = {"main": train_main, "sample": sample.main, "sample_vae": sample_vae.main,
            "train_classifier": train_classifier.main, "demo_report": demo_report.main, "evaluate": evaluate.main,
            "plots": plots.main, "reimagine": reimagine.main, "export": export.main,
            "encode_latents": encode_latents.main, "fetch_emoji": fetch_emoji.main,
            "prompt_agreement": prompt_agreement.main, "text2img": text2img.main}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Checkpoints (VAE, conditional denoiser, unconditional toy, broken copies) and small data folders."""
    root = tmp_path_factory.mktemp("inventory")
    assert train_main(["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", "1", "--output_dir", str(root),
                       *TINY]) == 0
    assert train_main(["-cfg", str(ROOT / "config" / "toy2d.json"), "--train-denoiser", "-n", "1",
                       "--output_dir", str(root), "--data.toy_num_points", "600", "--denoiser.trainer.max_steps", "2",
                       "--denoiser.trainer.progress_bar", "false"]) == 0
    run = root / "digits-1"
    f = {"root": str(root), "vae": str(run / "vae/checkpoints/last.ckpt"),
         "den": str(run / "denoiser/checkpoints/last.ckpt"),
         "toy": str(root / "toy2d-1/denoiser/checkpoints/last.ckpt")}
    data = Path(f["den"]).read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "empty.ckpt").write_bytes(b"")
    (root / "a_file").write_text("not a folder")
    marker = root / "pwned"
    torch.save({"ldm_kind": "denoiser", "payload": Evil(str(marker))}, root / "evil.ckpt")  # loading runs Evil
    f.update(truncated=str(root / "truncated.ckpt"), empty=str(root / "empty.ckpt"), file=str(root / "a_file"),
             evil=str(root / "evil.ckpt"), marker=str(marker))
    for name, count in (("few", 3), ("flat", 6)):
        (root / name).mkdir()
        for k in range(count):
            Image.new("L", (8, 8), 40 * k).save(root / name / f"{k}.png")
    (root / "corrupt" / "a").mkdir(parents=True)
    Image.new("L", (8, 8), 9).save(root / "corrupt" / "a" / "ok.png")
    (root / "corrupt" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (root / "empty_dir").mkdir()
    from model.classifier import SmallCNN, save_classifier

    f["clf"] = str(save_classifier(root / "clf.pt", SmallCNN(1, 10, 16, width=8), {}))
    f.update({k: str(root / k) for k in ("few", "flat", "corrupt", "empty_dir")})
    import datasets

    datasets.Dataset.from_dict({"img": [Image.new("RGB", (8, 8))] * 4, "y": [0, 1, 0, 1]}).save_to_disk(
        str(root / "hf"))
    f["hf"] = str(root / "hf")
    lat = root / "lat_truncated"
    assert encode_latents.main(["-cfg", DIGITS, "--load-vae", f["vae"], "--output", str(lat)]) == 0
    shard = lat / "train-00000.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    f["lat_truncated"] = str(lat)
    sd = root / "sd_no_unet"  # a Stable Diffusion folder without its UNet
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (sd / part).mkdir(parents=True)
    (sd / "model_index.json").write_text("{}")
    f["sd_no_unet"] = str(sd)
    return f


class Evil:
    """A pickle whose loading would run code (here: create a file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def folder_args(root: str, *extra: str) -> list[str]:
    return ["-cfg", DIGITS, "--train-vae", "--data.name", "folder", "--data.root", root, "--data.val_fraction", "0",
            "--data.image_size", "16", *extra]


# (command, argv with {placeholders} from `files`, words the one line must contain)
INVENTORY = [
    # ---- config ----
    ("main", ["-cfg", "/nonexistent/cfg.json", "--train-vae"], ["does not exist"]),
    ("main", ["-cfg", "{bad_json}", "--train-vae"], ["JSON"]),
    ("main", ["-cfg", "{unknown_key}", "--train-vae"], ["latent_size"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--bogus.key", "1"], ["bogus"]),
    ("main", ["-cfg", "{wrong_type}", "--train-vae"], ["batch_size"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--vae.trainer.max_steps", "ten"], ["vae.trainer.max_steps"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.T", "0"], ["denoiser.diffusion.T"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.p_uncond", "1.5"], ["p_uncond", "[0, 1]"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.p_uncond", "-0.1"], ["p_uncond"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--vae.optim.lr", "-0.1"], ["optim.lr"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.clip_limit", "0"], ["clip_limit"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.s_noise", "0"], ["s_noise", "> 0"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.autoguidance", "-1"],
     ["autoguidance", ">= 0"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.autoguidance", "0.3",
              "--denoiser.diffusion.guide_fraction", "0"], ["autoguidance", "needs a guide", "guide_fraction"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.guide_fraction", "1"],
     ["guide_fraction", "[0, 1)"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.objective", "score"], ["objective"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.objective", "flow",
              "--denoiser.diffusion.min_snr_gamma", "5"], ["min_snr_gamma", "flow", "null"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.objective", "edm",
              "--denoiser.diffusion.flow_logit_mean", "0", "--denoiser.diffusion.sigma_data", "0"], ["sigma_data", "> 0"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.objective", "vp"], ["flow_logit_mean", "vp"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--data.image_size", "31"], ["data.image_size", "divisible"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--data.image_size", "4", "--vae.net.channel_mult", "[1]"],
     ["vae.loss.ssim", "6 px"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--data.name", "imagenet"], ["data.name"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.unet.in_channels", "3"], ["denoiser.unet.in_channels"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.unet.class_bias_size", "64"],
     ["denoiser.unet.class_bias_size", "input size"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--load-vae", "{vae}", "--denoiser.unet.in_channels",
              str(digits_latent_shape(16)[0] + 1)],
     ["does not fit", "latent_channels"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--vae.trainer.accelerator", "banana"], ["trainer.accelerator"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--vae.trainer.accelerator", "cpu", "--vae.trainer.devices", "[0,1]"],
     ["trainer.devices"]),
    # ---- modes ----
    ("main", ["-cfg", DIGITS], ["nothing to do"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--load-vae", "{vae}"], ["--load-vae"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--train-denoiser", "--load", "{vae}"], ["--load"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--auto-resume"], ["--auto-resume", "-n"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--train-denoiser", "--denoiser.trainer.devices", "2"],
     ["different processes", "two commands"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--auto-resume", "-n", "1", "--load", "{vae}"], ["--auto-resume", "--load"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "-n", "-1"], ["-n"]),
    # ---- checkpoints ----
    ("sample", ["--load", "/nonexistent/x.ckpt"], ["does not exist"]),
    ("sample", ["--load", "{empty}"], ["empty"]),
    ("sample", ["--load", "{truncated}"], ["truncated or corrupt"]),
    ("sample", ["--load", "{evil}"], ["could run code", "refused"]),
    ("sample", ["--load", "{vae}"], ["vae checkpoint", "denoiser"]),
    ("sample_vae", ["--load", "{den}"], ["denoiser checkpoint", "vae"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--load-vae", "/nonexistent/vae.ckpt"], ["does not exist"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--load-vae", "{den}"], ["denoiser checkpoint"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--load", "{den}"], ["denoiser checkpoint"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--load", "{den}", "-n", "1", "--output_dir", "{root}", *TINY,
              "--denoiser.unet.base_channels", "32"], ["does not fit", "base_channels"]),
    ("demo_report", ["--load", "{den}", "--classifier", "{vae}"], ["vae checkpoint", "classifier"]),
    # ---- sampling flags ----
    ("sample", ["--load", "{den}", "--steps", "1001"], ["--steps", "T=1000"]),
    ("sample", ["--load", "{den}", "--steps", "0"], ["--steps"]),
    ("sample", ["--load", "{den}", "--clip_limit", "0"], ["--clip_limit"]),
    ("sample", ["--load", "{den}", "--guidance-rescale", "2"], ["guidance rescale", "[0, 1]"]),
    ("sample", ["--load", "{den}", "--class", "10"], ["out of range"]),
    ("sample", ["--load", "{den}", "--class", "1", "--per-class", "2"], ["not allowed with"]),
    ("sample", ["--load", "{toy}", "--cfg-scale", "2"], ["unconditional", "--cfg-scale"]),
    ("sample", ["--load", "{toy}", "--class", "1"], ["unconditional"]),
    ("sample", ["--load", "{den}", "--output", "{file}"], ["is a file"]),
    ("sample", ["--load", "{den}", "--num_samples", "0"], ["--num_samples"]),
    ("sample", ["--load", "{den}", "--eta", "-1"], ["--eta"]),
    ("sample", ["--load", "{den}", "--s-noise", "nan"], ["--s-noise", "> 0"]),
    ("sample", ["--load", "{den}", "--autoguidance", "nan"], ["--autoguidance", ">= 0"]),
    ("sample", ["--load", "{toy}", "--autoguidance", "0.5"], ["needs the guide network", "--autoguidance 0"]),
    ("sample", ["--load", "{den}", "--bogus"], ["unrecognized"]),
    ("sample", ["--load", "{den}", "--prompt", "a red heart"], ["prompts need a model trained on prompts"]),
    ("prompt_agreement", ["--load", "{den}", "--classifier", "x.pt", "--label-field", "f"],
     ["needs a model trained on prompts"]),
    ("prompt_agreement", ["--load", "/nonexistent/x.ckpt", "--classifier", "x.pt", "--label-field", "f"],
     ["does not exist"]),
    ("sample", ["--load", "{den}", "--prompt", "a", "--per-prompt", "0"], ["--per-prompt must be > 0"]),
    ("sample", ["--load", "{den}", "--prompts-file", "/nonexistent/p.txt"], ["cannot read --prompts-file"]),
    ("sample", ["--load", "{den}", "--prompt", "a", "--per-class", "2"], ["--per-class and prompts"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.text.encoder", "pretrained"],
     ["denoiser.text.path is not set"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.unet.cross_attention_levels", "[1]"],
     ["cross_attention_levels is set but denoiser.text.encoder is none"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.text.encoder", "bytes",
              "--denoiser.unet.cross_attention_levels", "[1]"], ["data.captions is false"]),
    ("sample_vae", ["--load", "{vae}", "--output", "{file}"], ["is a file"]),
    # ---- data ----
    ("main", folder_args("/nonexistent/images"), ["does not exist"]),
    ("main", folder_args("{empty_dir}", "--data.labels", "false"), ["no images"]),
    ("main", folder_args("{corrupt}", "--data.on_corrupt", "error"), ["bad.png"]),
    ("main", folder_args("{few}", "--data.labels", "false"), ["fewer", "batch"]),
    ("main", folder_args("{flat}", "--data.labels", "true"), ["data.labels false"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--data.name", "hf", "--data.root", "{hf}", "--data.channels", "1",
              "--data.hf_image_column", "image"], ["hf_image_column", "img"]),
    ("train_classifier", ["-cfg", DIGITS, "--data.labels", "false", "--output", "{root}/c.pt"], ["unlabelled"]),
    ("train_classifier", ["-cfg", str(ROOT / "config" / "toy2d.json")], ["holds points"]),
    # ---- evaluation, plots, reimagining ----
    ("evaluate", ["--load", "{den}", "--num_samples", "1"], ["--num_samples", "at least 2"]),
    ("sample", ["--load", "{den}", "--ddim", "--sampler", "dpmpp_2m"], ["--ddim", "disagree"]),
    ("sample", ["--load", "{den}", "--sampler", "plms"], ["--sampler", "invalid choice"]),
    ("evaluate", ["--load", "{den}", "--steps", "0"], ["--steps"]),
    ("evaluate", ["--load", "{toy}", "--cfg-scale", "0", "2"], ["unconditional", "--cfg-scale"]),
    ("evaluate", ["--load", "{den}", "--extractor", "classifier"], ["--classifier"]),
    ("evaluate", ["--load", "{den}", "--classifier", "{vae}"], ["vae checkpoint", "classifier"]),
    ("evaluate", ["--load", "{den}", "--loss-timesteps", "0", "10"], ["--loss-timesteps"]),
    ("evaluate", ["--load", "{den}", "--inception-features", "100"], ["--inception-features"]),
    ("evaluate", ["--load", "{den}", "--inception-weights", "/nowhere/inception.pth"], ["/nowhere/inception.pth"]),
    ("evaluate", ["--load", "{den}", "--inception-weights", "{evil}"], ["could run code"]),
    ("evaluate", ["--load", "{den}", "--inception-weights", "{vae}"], ["not torch-fidelity's Inception-v3"]),
    ("evaluate", ["--load", "{den}", "--classifier", "{clf}", "--num_samples", "100"],
     ["2n = 200 real images", "--num_samples 60 or fewer"]),
    ("evaluate", ["--load", "{den}", "--classifier", "{clf}", "--pca-components", "0"], ["--pca-components", ">= 1"]),
    ("evaluate", ["--load", "{den}", "--classifier", "{clf}", "--pixel-size", "32"], ["--pixel-size 32", "16 px"]),
    ("demo_report", ["--load", "{den}", "--classifier", "{clf}", "--per-class", "10"], ["2n = 200 real images", "--per-class 6 or fewer"]),
    ("demo_report", ["--load", "{den}", "--classifier", "{clf}", "--steps", "0"], ["--steps must be in [1, T="]),
    ("demo_report", ["--load", "{den}", "--classifier", "{clf}", "--class-per-class", "0"],
     ["--class-per-class must be > 0"]),
    ("demo_report", ["--load", "{den}", "--classifier", "{clf}", "--ddim", "--sampler", "euler"],
     ["--ddim and --sampler euler disagree"]),
    ("plots", ["noising", "--load", "{den}", "--T", "0"], ["--T"]),
    ("plots", ["denoising", "--load", "{toy}"], ["2-D toy"]),
    ("plots", ["loss", "--run", "{empty_dir}"], ["metrics.csv"]),
    ("reimagine", ["--load", "{den}", "--strengths", "1.5"], ["strength", "[0, 1]"]),
    ("reimagine", ["--load", "{den}", "--image", "/nowhere/x.png"], ["does not exist"]),
    ("reimagine", ["--load", "{toy}"], ["draws points"]),
    ("reimagine", ["--load", "{den}", "--mask", "{root}/m.png", "--sampler", "dpmpp_2m", "--resample-steps", "2"],
     ["keeps a history", "--resample-steps", "euler"]),
    # ---- sizes that would allocate too much ----
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.T", "2000000000"], ["T must be in [1, 100000]"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--data.image_size", "100000"], ["data.image_size must be in"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--vae.trainer.batch_size", "10000000"], ["trainer.batch_size must be"]),
    ("sample", ["--load", "{den}", "--num_samples", "100000000"], ["GiB in samples.npz", "at most 8388608 per call"]),
    # ---- latents on disk ----
    ("encode_latents", ["-cfg", DIGITS, "--load-vae", "{den}", "--output", "{root}/lat"], ["denoiser checkpoint",
                                                                                            "a vae is needed"]),
    ("encode_latents", ["-cfg", DIGITS, "--load-vae", "{vae}", "--output", "{root}"], ["not empty"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--data.name", "latents", "--data.root", "{empty_dir}",
              "--load-vae", "{vae}"], ["meta.json is missing", "encode_latents"]),
    ("main", ["-cfg", DIGITS, "--train-denoiser", "--data.name", "latents", "--data.root", "{lat_truncated}",
              "--load-vae", "{vae}"], ["train-00000.pt", "truncated", "encode_latents"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--train-denoiser", "--data.name", "latents", "--data.root",
              "{lat_truncated}"], ["trains a new one", "encode_latents"]),
    # ---- both stages checked before stage 1 trains ----
    ("main", ["-cfg", DIGITS, "--train-vae", "--train-denoiser", "--denoiser.unet.num_classes", "7"],
     ["7 classes", "data has 10"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--train-denoiser", "--denoiser.trainer.batch_size", "5000"],
     ["fewer than one batch", "at most"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--train-denoiser", "--denoiser.trainer.fid_every_n_steps", "10",
              "--denoiser.trainer.best_by", "val/recon"], ["best_by val/recon"]),
    # ---- the discriminator ----
    ("main", ["-cfg", DIGITS, "--train-vae", "--vae.disc.weight", "0.5", "--vae.disc.layers", "9"],
     ["vae.disc.layers 9", "16 px", "at most 2"]),
    # ---- export ----
    ("export", ["--load", "{vae}", "--output", "{root}/export"], ["vae checkpoint", "denoiser"]),
    ("export", ["--load", "{den}", "--output", "{file}"], ["is a file"]),
    ("export", ["--load", "{den}", "--output", "{root}"], ["not empty", "--overwrite"]),
    ("export", ["--load", "{den}", "--output", "{root}/export", "--push-to-hub", "digits"], ["user/name"]),
    ("sample", ["--load", "{empty_dir}"], ["not an export", "config.json is missing"]),
    # ---- Stable Diffusion folders ----
    ("text2img", ["--model", "/nonexistent/sd", "--prompt", "a cat"], ["does not exist", "model_index.json, unet/"]),
    ("text2img", ["--model", "{empty_dir}", "--prompt", "a cat"], ["no model_index.json", "unet/, vae/"]),
    ("text2img", ["--model", "{sd_no_unet}", "--prompt", "a cat"], ["has no unet/", "model_index.json"]),
    ("text2img", ["--model", "{sd_no_unet}"], ["--prompt"]),
    ("text2img", ["--model", "{sd_no_unet}", "--prompt", "a", "--cfg-scale", "2", "--cfg-sweep", "0", "2"],
     ["--cfg-sweep", "not allowed with"]),
    # ---- offline ----
    ("main", ["-cfg", DIGITS, "--train-vae", "--vae.loss.lpips", "1", "--vae.loss.lpips_weights", "/nowhere/a.pth",
              "--vae.trainer.max_steps", "1"], ["/nowhere/a.pth"]),
    ("main", ["-cfg", DIGITS, "--train-vae", "--vae.loss.lpips", "1", "--vae.trainer.max_steps", "1",
              "--output_dir", "{root}/lpips"], ["alexnet-owt-7be5be79.pth"]),
    ("evaluate", ["--load", "{den}", "--num_samples", "4"], ["weights-inception-2015-12-05-6726825d.pth",
                                                              "--inception-weights"]),
    ("demo_report", ["--load", "{den}", "--classifier", "{clf}", "--inception"],
     ["weights-inception-2015-12-05-6726825d.pth", "--inception-weights"]),
    ("demo_report", ["--load", "{den}", "--classifier", "{clf}", "--inception-weights", "/nowhere/inception.pth"],
     ["/nowhere/inception.pth"]),
    ("demo_report", ["--load", "{den}", "--classifier", "{clf}", "--inception-weights", "{vae}"],
     ["not torch-fidelity's Inception-v3"]),
    ("fetch_emoji", ["--output", "emoji", "--from", "twitter"], ["SET=DIR"]),
    ("fetch_emoji", ["--output", "emoji", "--sets", "apple"], ["unknown emoji set", "twitter, google"]),
    ("fetch_emoji", ["--output", "emoji", "--sets", "twitter", "--from", "twitter={empty_dir}"], ["no emoji.json"]),
    ("fetch_emoji", ["--output", "{few}", "--sets", "twitter", "--from", "twitter={empty_dir}"],
     ["not an empty folder"]),
]


def fill(argv: list[str], files: dict[str, str], tmp_path: Path) -> list[str]:
    """Replace {name} by a path from `files`, or by a config file made for the case."""
    made = {
        "bad_json": '{"data": {"name": "digits",}',
        "unknown_key": json.dumps({"vae": {"net": {"latent_size": 4}}}),
        "wrong_type": json.dumps({"data": {"batch_size": "many"}}),
    }
    out = []
    for a in argv:
        for key, text in made.items():
            if "{" + key + "}" in a:
                (tmp_path / f"{key}.json").write_text(text)
                a = a.replace("{" + key + "}", str(tmp_path / f"{key}.json"))
        out.append(a.format(**files) if "{" in a and "[" not in a else a)
    return out


@pytest.mark.parametrize("command,argv,needles", INVENTORY,
                         ids=[f"{i:02d}-{c}-{'-'.join(n)[:40]}" for i, (c, _, n) in enumerate(INVENTORY)])
def test_inventory(command, argv, needles, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached backbone weights
    monkeypatch.chdir(tmp_path)  # anything a case writes by default stays here
    capsys.readouterr()
    code = COMMANDS[command](fill(argv, files, tmp_path))
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not Path(files["marker"]).exists()  # the malicious pickle never ran
    # nothing was written: no run folder here, no sample or report folder beside the checkpoints
    assert not (tmp_path / "runs").exists()
    for ckpt in ("vae", "den", "toy"):
        stage = Path(files[ckpt]).parent.parent
        assert sorted(p.name for p in stage.iterdir()) == ["checkpoints", "logs"], stage


def test_every_command_of_the_package_has_bad_input_cases():
    """A new script under model/scripts joins the inventory (COMMANDS and at least one case) or this fails."""
    import pkgutil

    import model.scripts

    scripts = {m.name for m in pkgutil.iter_modules(model.scripts.__path__)
               if hasattr(__import__(f"model.scripts.{m.name}", fromlist=["main"]), "main")}
    assert scripts | {"main"} == set(COMMANDS)
    assert {c for c, _, _ in INVENTORY} == set(COMMANDS)


def test_refused_resume_leaves_the_run_intact(files, capsys):
    """A refused --load (wrong shapes) writes nothing: the checkpoints keep their bytes."""
    ckpt_dir = Path(files["den"]).parent
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    argv = fill(INVENTORY[[i for i, (_, a, n) in enumerate(INVENTORY) if "base_channels" in n][0]][1], files,
                Path(files["root"]))
    assert train_main(argv) == 2
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == before
    assert torch.load(files["den"], weights_only=True)["global_step"] == 2
