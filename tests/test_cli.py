"""The training CLI as a process: overrides, --print_config, exit 2 from the shell, --debug, train.sh, 2-process DDP;
and in one process: the parser and the stored configs it reuses.

The one-line answers to bad input are in test_bad_inputs.py.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import DIGITS, ROOT, digits_latent_shape, failure_summary


@pytest.mark.slow
def test_print_config_shows_overrides():
    out = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--denoiser.diffusion.T", "321",
                          "--print_config"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "T: 321" in out.stdout
    assert f"latent_channels: {digits_latent_shape(16)[0]}" in out.stdout  # a value from the file itself


@pytest.mark.slow
def test_cli_exit_code_from_shell(tmp_path):
    """The real process exits with 2 and prints no traceback (the entry point, not just main())."""
    out = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "--vae.optim.lr", "-1"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.strip().startswith("error: ")


@pytest.mark.slow
def test_debug_flag_shows_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "--vae.optim.lr", "-1",
                          "--debug"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.mark.slow
def test_train_sh_runs_a_stage_and_rejects_a_bad_stage(tmp_path):
    """train.sh (what train.sbatch launches) maps CONFIG/STAGE/RUN onto model.main and passes extra arguments on."""
    script = str(ROOT / "train.sh")
    env = {**os.environ, "CONFIG": DIGITS, "STAGE": "vae", "RUN": "7"}
    out = subprocess.run(["bash", script, "--output_dir", str(tmp_path), "--data.image_size", "16",
                          "--data.max_items", "100", "--vae.trainer.max_steps", "2",
                          "--vae.trainer.val_every_n_steps", "2", "--vae.trainer.progress_bar", "false"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "digits-7" / "vae" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "digits-7" / "denoiser").exists()
    bad = subprocess.run(["bash", script], capture_output=True, text=True, env={**env, "STAGE": "both-ish"})
    assert bad.returncode == 2 and bad.stderr.startswith("error: STAGE must be")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_ddp_run_on_cpu(tmp_path):
    """Both stages under DDP with 2 CPU processes (gloo): the run ends at the configured step, rank zero alone
    reports, the checkpoint holds the same step count a single process would reach, and both ranks end with the
    same weights, EMA and latent statistics."""
    ddp = []
    for stage in ("vae", "denoiser"):
        for key, value in (("accelerator", "cpu"), ("devices", "2"), ("strategy", "ddp"), ("max_steps", "4"),
                           ("val_every_n_steps", "2"), ("progress_bar", "false"), ("images_every_n_steps", "0")):
            ddp += [f"--{stage}.trainer.{key}", value]
    out = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "--train-denoiser",
                          "-n", "1", "--output_dir", str(tmp_path), "--data.image_size", "16", "--data.max_items",
                          "200", "--data.batch_size", "16", "--vae.trainer.batch_size", "16",
                          "--denoiser.trainer.batch_size", "16", "--vae.net.base_channels", "8",
                          "--denoiser.unet.base_channels", "16", "--denoiser.unet.channel_mult", "[1, 2]", *ddp],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, failure_summary(out.stderr)
    assert out.stdout.count("VAE checkpoint:") == 1 and out.stdout.count("denoiser checkpoint:") == 1, out.stdout
    for stage in ("vae", "denoiser"):
        ckpt = torch.load(tmp_path / "digits-1" / stage / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 4
        digests = ckpt["callbacks"]["SameWeightsOnEveryRank"]["digests"]  # net, EMA, latent statistics per rank
        assert len(digests) == 2 and digests[0] == digests[1]


@pytest.mark.slow
def test_a_normal_run_prints_its_own_lines_and_a_step_bar_and_verbose_shows_the_rest(tmp_path):
    def train(*extra: str) -> str:
        cmd = [sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "--output_dir", str(tmp_path),
               "--vae.trainer.max_steps", "12", "--vae.trainer.val_every_n_steps", "6", "--data.max_items", "200",
               *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    out = train("-n", "1")
    lines = [ln for ln in out.replace("\r", "\n").splitlines() if ln.strip()]
    assert re.match(r"vae: \d+\.\d\d M trained parameters, 12 steps; global batch 64 ", lines[0])  # the VAE's batch
    def bar(line: str) -> bool:  # tqdm writes the rate as "4.2 step/s", or as "1.3s/ step" below one step a second
        return "step/s" in line or "s/ step" in line

    assert any("12/12" in ln and bar(ln) for ln in lines)  # the bar counts optimiser steps, not epochs
    rest = [ln for ln in lines if not bar(ln)][1:]
    assert len(rest) == 2 and rest[0].startswith("vae: trained to step 12 in ")
    assert rest[1] == f"VAE checkpoint: {tmp_path}/digits-1/vae/checkpoints/last.ckpt"
    for noise in ("Epoch", "Tip", "GPU available", "Warning", "deprecated", "| Name"):
        assert noise not in out, noise
    assert "GPU available" in train("-n", "2", "--verbose")


def test_main_reuses_one_parser_and_an_override_does_not_reach_the_next_command():
    """The parser is built once per process (building it walks every Config field); parsing must leave it as built."""
    from model.cli_config import build_config, parse
    from model.main import make_parser

    parser = make_parser()
    assert make_parser() is parser
    overridden = build_config(parser, parse(parser, ["-cfg", DIGITS, "--train-vae", "--vae.optim.lr", "0.5"]))
    plain = build_config(parser, parse(parser, ["-cfg", DIGITS, "--train-vae"]))
    assert overridden.vae.optim.lr == 0.5
    assert plain.vae.optim.lr == json.loads(Path(DIGITS).read_text())["vae"]["optim"]["lr"]


def test_a_checked_config_reaches_its_system_without_a_second_check(monkeypatch):
    """`checked_dict`: a training system skips the check of a Config this process already checked and gets a copy
    of it (tests/test_configs.py checks, for every shipped config, that checking its dict again gives the same)."""
    from jsonargparse import ArgumentParser

    from model.cli_config import checked_dict, from_dict

    cfg = from_dict(json.loads(Path(DIGITS).read_text()))
    cfg.name = "checked-by-its-parser"  # a Config no other test has stored in this process
    checks = []
    parse_object = ArgumentParser.parse_object
    monkeypatch.setattr(ArgumentParser, "parse_object", lambda self, *a, **k: checks.append(1) or
                        parse_object(self, *a, **k))
    stored = checked_dict(cfg)
    expected = copy.deepcopy(cfg)
    cfg.seed += 1  # the caller's Config is not the remembered one
    assert from_dict(stored) == expected and not checks


def test_a_stored_config_is_checked_once_and_every_caller_gets_its_own_copy(monkeypatch):
    from jsonargparse import ArgumentParser

    from model.cli_config import from_dict
    from model.config import to_dict
    from model.errors import UserError

    stored = to_dict(from_dict(json.loads(Path(DIGITS).read_text())))
    stored["name"] = "checked-once"  # a dict no other test has stored in this process
    checks = []
    parse_object = ArgumentParser.parse_object

    def counted(self, *args, **kwargs):
        checks.append(1)
        return parse_object(self, *args, **kwargs)

    monkeypatch.setattr(ArgumentParser, "parse_object", counted)
    first = from_dict(stored)
    first.vae.optim.lr = 123.0  # a caller that edits its Config (encode_latents does) must not change the next one's
    second = from_dict(stored)
    assert second is not first and second.vae.optim.lr == stored["vae"]["optim"]["lr"]
    assert len(checks) == 1  # the second caller got a copy of the first check's Config
    broken = {**stored, "vae": {**stored["vae"], "optim": {**stored["vae"]["optim"], "lr": -1.0}}}
    for _ in range(2):  # a refused dict is refused every time, never remembered as valid
        with pytest.raises(UserError, match="lr"):
            from_dict(broken)
