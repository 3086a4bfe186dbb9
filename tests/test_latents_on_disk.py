"""Latents on disk (model.scripts.encode_latents, data.name "latents"): the same training as the in-memory cache,
bit for bit; exact resume; shards; and a VAE that did not make the latents is refused."""
from __future__ import annotations

import json

import pytest
import torch

from model.main import main
from model.scripts.encode_latents import main as encode_main
from tiny import DIGITS, digits_latent_shape, tiny

TINY = tiny(val_every=3, log_every=1)
DENOISER = ["-cfg", DIGITS, "--train-denoiser", *TINY, "--denoiser.trainer.max_steps", "6",
            "--denoiser.trainer.checkpoint_every_n_steps", "3"]


@pytest.fixture(scope="module")
def vae_and_latents(tiny_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    assert encode_main(["-cfg", DIGITS, *TINY, "--load-vae", str(tiny_runs["vae"]), "--output",
                        str(root / "lat"), "--shard-size", "40"]) == 0
    return tiny_runs["vae"], root / "lat"


def test_the_latents_folder_holds_shards_stats_and_the_vae_digest(vae_and_latents):
    from model.checkpoint import weights_digest
    from model.scripts.sample_vae import load_vae

    vae_path, lat = vae_and_latents
    meta = json.loads((lat / "meta.json").read_text())
    assert meta["splits"]["train"]["items"] == 108 and meta["splits"]["val"]["items"] == 12  # 120 items, 10 % held out
    assert [s["items"] for s in meta["splits"]["train"]["shards"]] == [40, 40, 28]
    assert meta["vae_digest"] == weights_digest(load_vae(str(vae_path), "cpu")[0])
    z = torch.cat([torch.load(lat / s["file"], weights_only=True)["z"] for s in meta["splits"]["train"]["shards"]])
    assert list(z.shape[1:]) == meta["latent_shape"] == digits_latent_shape(16)
    torch.testing.assert_close(z.double().mean(dim=(0, 2, 3)), torch.tensor(meta["stats"]["mean"], dtype=torch.float64))


@pytest.mark.slow
def test_training_from_disk_latents_equals_the_in_memory_cache_bit_for_bit(vae_and_latents, tmp_path):
    vae_path, lat = vae_and_latents
    common = [*DENOISER, "--load-vae", str(vae_path)]
    assert main([*common, "-n", "1", "--output_dir", str(tmp_path / "memory")]) == 0
    assert main([*common, "-n", "1", "--output_dir", str(tmp_path / "disk"), "--data.name", "latents",
                 "--data.root", str(lat)]) == 0
    a, b = (torch.load(tmp_path / d / "digits-1" / "denoiser" / "checkpoints" / "last.ckpt", weights_only=True)
            for d in ("memory", "disk"))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name


@pytest.mark.slow
def test_a_run_on_disk_latents_resumes_exactly(vae_and_latents, tmp_path):
    vae_path, lat = vae_and_latents
    common = [*DENOISER, "--load-vae", str(vae_path), "--data.name", "latents", "--data.root", str(lat)]
    assert main([*common, "-n", "1", "--output_dir", str(tmp_path / "whole")]) == 0
    assert main([*common, "-n", "1", "--output_dir", str(tmp_path / "parts"), "--denoiser.trainer.max_steps", "3"]) == 0
    stage = tmp_path / "parts" / "digits-1" / "denoiser"
    assert main([*DENOISER, "--data.name", "latents", "--data.root", str(lat), "-n", "1", "--output_dir",
                 str(tmp_path / "parts"), "--load", str(stage / "checkpoints" / "last.ckpt")]) == 0
    a, b = (torch.load(tmp_path / d / "digits-1" / "denoiser" / "checkpoints" / "last.ckpt", weights_only=True)
            for d in ("whole", "parts"))
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name


def test_latents_of_another_vae_are_refused_in_one_line(vae_and_latents, tmp_path, capsys):
    vae_path, lat = vae_and_latents
    assert main(["-cfg", DIGITS, "--train-vae", *TINY, "-n", "9", "--output_dir", str(tmp_path),
                 "--vae.trainer.max_steps", "1", "--seed", "3"]) == 0
    other = tmp_path / "digits-9" / "vae" / "checkpoints" / "last.ckpt"
    code = main([*DENOISER, "--load-vae", str(other), "--data.name", "latents", "--data.root", str(lat), "-n", "1",
                 "--output_dir", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "encoded by VAE" in err and "encode them again" in err


def test_quality_during_training_scores_disk_latents_against_their_source_images(vae_and_latents, tmp_path):
    import csv

    vae_path, lat = vae_and_latents
    assert main([*DENOISER, "--load-vae", str(vae_path), "--data.name", "latents", "--data.root", str(lat), "-n", "1",
                 "--output_dir", str(tmp_path), "--denoiser.trainer.fid_every_n_steps", "3",
                 "--denoiser.trainer.fid_num_samples", "20"]) == 0
    rows = [r for r in csv.DictReader(open(tmp_path / "digits-1" / "denoiser" / "logs" / "metrics.csv"))
            if r.get("val/pixel_fd")]
    assert [int(r["step"]) for r in rows] == [2, 5] and all(float(r["val/pixel_fd"]) > 0 for r in rows)
