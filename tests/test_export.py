"""Export (model/export.py, model.scripts.export): safetensors + config + model card, loading without Lightning,
the same samples as the checkpoint, the model card's evaluation, and publishing (no network here)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from model.checkpoint import read_checkpoint, state_dict_under
from model.errors import UserError
from model.export import FORMAT, read_export
from model.pipeline import LatentDiffusionPipeline
from model.scripts.export import main as export_main
from tiny import ROOT


@pytest.fixture(scope="module")
def exported(tiny_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "digits"
    assert export_main(["--load", str(tiny_runs["latent"]), "--output", str(out)]) == 0
    return out


def test_the_export_holds_the_ema_weights_latent_statistics_config_and_card(exported, tiny_runs):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "denoiser.safetensors",
                                                          "vae.safetensors"]
    ckpt = read_checkpoint(tiny_runs["latent"])
    with safe_open(str(exported / "denoiser.safetensors"), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
        assert torch.equal(f.get_tensor("latent_scale"), ckpt["state_dict"]["latent_scale"])
        ema, guide = state_dict_under(ckpt, "ema"), state_dict_under(ckpt, "guide")
        assert guide.keys() == ema.keys() and bool(ckpt["state_dict"]["guide_ready"])  # the config's guide_fraction
        assert keys == {f"net.{k}" for k in ema} | {f"guide.{k}" for k in guide} | {"latent_shift", "latent_scale"}
        assert all(torch.equal(f.get_tensor(f"net.{k}"), v) for k, v in ema.items())
        assert all(torch.equal(f.get_tensor(f"guide.{k}"), v) for k, v in guide.items())
    assert meta == {"format": FORMAT, "num_classes": "10", "global_step": str(ckpt["global_step"])}
    assert json.loads((exported / "config.json").read_text()) == ckpt["ldm_config"]
    card = (exported / "README.md").read_text()
    assert f"trained {ckpt['global_step']} optimiser steps on `digits` at 16×16 px" in card
    assert "LatentDiffusionPipeline.from_pretrained" in card and "No evaluation of this checkpoint" in card
    assert (exported / "denoiser.safetensors").stat().st_mode & 0o044  # readable by others: meant to be shared


def test_the_export_samples_exactly_like_its_checkpoint_and_through_sample(exported, tiny_runs, tmp_path):
    from model.scripts.sample import main as sample_main

    settings = dict(class_labels=[3, 1, 4, 1], cfg_scale=2.0, sampler="dpmpp_2m", steps=3, seed=5)
    from_export = LatentDiffusionPipeline.from_pretrained(exported)(4, **settings)
    np.testing.assert_array_equal(from_export, LatentDiffusionPipeline.from_pretrained(tiny_runs["latent"])(4, **settings))
    assert sample_main(["--load", str(exported), "--sampler", "dpmpp_2m", "--steps", "3", "--class", "7",
                        "--num_samples", "2", "--seed", "5"]) == 0
    written = np.load(exported.with_name("digits-samples") / "samples.npz")  # beside the export, not inside it
    np.testing.assert_array_equal(written["images"], LatentDiffusionPipeline.from_pretrained(exported)(
        2, class_labels=[7, 7], sampler="dpmpp_2m", steps=3, seed=5))
    assert sorted(p.name for p in exported.iterdir())[0] == "README.md" and len(list(exported.iterdir())) == 4


@pytest.mark.slow
def test_an_export_loads_and_samples_in_a_process_that_never_imports_lightning(exported):
    code = (f"import sys\nfrom model.pipeline import LatentDiffusionPipeline\n"
            f"pipe = LatentDiffusionPipeline.from_pretrained({str(exported)!r})\n"
            f"images = pipe(3, class_labels=[0, 1, 2], steps=2)\n"
            f"print(images.shape, images.dtype, sorted(m for m in sys.modules if m.split('.')[0] in "
            f"('pytorch_lightning', 'lightning', 'lightning_fabric')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "(3, 16, 16, 1) uint8 []"


def test_a_pixel_model_exports_without_a_vae(tiny_runs, tmp_path):
    assert export_main(["--load", str(tiny_runs["pixel"]), "--output", str(tmp_path / "px")]) == 0
    assert not (tmp_path / "px" / "vae.safetensors").exists()
    cfg, classes, tensors = read_export(tmp_path / "px")
    assert cfg.denoiser.autoencoder == "none" and classes == 10 and tensors["autoencoder"] == {}
    assert LatentDiffusionPipeline.from_pretrained(tmp_path / "px")(2, steps=2).shape == (2, 16, 16, 1)


def test_the_model_card_carries_the_evaluation_of_that_checkpoint(tiny_runs, tmp_path):
    from model.classifier import SmallCNN, save_classifier
    from model.scripts.evaluate import main as evaluate_main

    ckpt = tmp_path / "run" / "denoiser" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(tiny_runs["latent"], ckpt)
    clf = save_classifier(tmp_path / "clf.pt", SmallCNN(1, 10, 16, width=8), {})
    assert evaluate_main(["--load", str(ckpt), "--classifier", str(clf), "--num_samples", "20", "--ddim", "--steps",
                          "2", "--stats-cache", str(tmp_path / "stats"), "--loss-timesteps", "500"]) == 0
    assert export_main(["--load", str(ckpt), "--output", str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    report = json.loads((ckpt.parent.parent / "evaluation" / "evaluation.json").read_text())
    assert "## Evaluation" in card and f"| 0 | {report['scales'][0]['fid']:.4f} |" in card
    assert "| real floor |" in card and "| VAE round trip |" in card


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls, or fails like the hub when offline."""

    calls: list = []
    error: Exception | None = None

    def create_repo(self, repo_id, **kw):
        if FakeHub.error:
            raise FakeHub.error
        FakeHub.calls.append(("create_repo", repo_id))

    def upload_folder(self, **kw):
        FakeHub.calls.append(("upload_folder", kw["repo_id"], sorted(p.name for p in Path(kw["folder_path"]).iterdir())))


def test_push_to_hub_uploads_the_folder_or_says_in_one_line_what_to_do(tiny_runs, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls, FakeHub.error = [], None
    argv = ["--load", str(tiny_runs["latent"]), "--output", str(tmp_path / "e"), "--push-to-hub", "me/digits"]
    assert export_main(argv) == 0
    assert FakeHub.calls == [("create_repo", "me/digits"), ("upload_folder", "me/digits",
                                                            ["README.md", "config.json", "denoiser.safetensors",
                                                             "vae.safetensors"])]
    assert "pushed to https://huggingface.co/me/digits" in capsys.readouterr().out
    for error, needle in ((OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE"), (ConnectionError("no route"),
                                                                                  "huggingface-cli login")):
        FakeHub.error = error
        assert export_main(argv + ["--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and str(tmp_path / "e") in err  # the export is kept
        assert (tmp_path / "e" / "denoiser.safetensors").is_file()


@pytest.mark.slow
def test_push_to_hub_offline_for_real(tiny_runs, tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "model.scripts.export", "--load", str(tiny_runs["latent"]),
                           "--output", str(tmp_path / "e"), "--push-to-hub", "me/digits"], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: the Hugging Face hub is switched off")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_broken_export_is_refused_in_one_line(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "denoiser.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="unreadable tensor file"):
        read_export(broken)
    (broken / "config.json").unlink()
    with pytest.raises(UserError, match="config.json is missing"):
        LatentDiffusionPipeline.from_pretrained(broken)
