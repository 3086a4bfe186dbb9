"""The training CLI: config parsing, overrides, one-line errors with exit code 2, run folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.main import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "config" / "digits.json")


def run_main(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("argv,needles", [
    (["-cfg", "/nonexistent/cfg.json", "--train-vae"], ["does not exist"]),
    (["-cfg", DIGITS], ["nothing to do"]),
    (["-cfg", DIGITS, "--train-vae", "--bogus.key", "1"], ["bogus"]),
    (["-cfg", DIGITS, "--train-vae", "--vae.trainer.max_steps", "ten"], ["vae.trainer.max_steps"]),
    (["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.T", "0"], ["denoiser.diffusion.T"]),
    (["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.p_uncond", "1.5"], ["p_uncond"]),
    (["-cfg", DIGITS, "--train-vae", "--vae.optim.lr", "-0.1"], ["optim.lr"]),
    (["-cfg", DIGITS, "--train-denoiser", "--denoiser.diffusion.clip_limit", "0"], ["clip_limit"]),
    (["-cfg", DIGITS, "--train-vae", "--data.image_size", "30"], ["data.image_size", "divisible"]),
    (["-cfg", DIGITS, "--train-denoiser", "--denoiser.unet.in_channels", "3"], ["denoiser.unet.in_channels"]),
    (["-cfg", DIGITS, "--train-vae", "--data.name", "imagenet"], ["data.name"]),
    (["-cfg", DIGITS, "--train-vae", "--load-vae", "x.ckpt"], ["--load-vae"]),
    (["-cfg", DIGITS, "--train-vae", "--train-denoiser", "--load", "x.ckpt"], ["--load"]),
    (["-cfg", DIGITS, "--train-denoiser", "--load-vae", "/nonexistent/vae.ckpt"], ["does not exist"]),
])
def test_bad_input_is_one_line_exit_2(argv, needles, capsys):
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err, *needles)


def test_unknown_key_in_file(tmp_path, capsys):
    cfg = write(tmp_path, "bad.json", json.dumps({"vae": {"net": {"latent_size": 4}}}))
    code, err = run_main(["-cfg", cfg, "--train-vae"], capsys)
    assert_one_line_error(code, err, "latent_size")


def test_invalid_json(tmp_path, capsys):
    cfg = write(tmp_path, "bad.json", '{"data": {"name": "digits",}')
    code, err = run_main(["-cfg", cfg, "--train-vae"], capsys)
    assert_one_line_error(code, err)


def test_wrong_type_in_file(tmp_path, capsys):
    cfg = write(tmp_path, "bad.json", json.dumps({"data": {"batch_size": "many"}}))
    code, err = run_main(["-cfg", cfg, "--train-vae"], capsys)
    assert_one_line_error(code, err, "batch_size")


def test_print_config_shows_overrides():
    out = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--denoiser.diffusion.T", "321",
                          "--print_config"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "T: 321" in out.stdout
    assert "latent_channels: 4" in out.stdout  # a value from the file itself


def test_cli_exit_code_from_shell(tmp_path):
    """The real process exits with 2 and prints no traceback (the entry point, not just main())."""
    out = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "--vae.optim.lr", "-1"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.strip().startswith("error: ")


def test_debug_flag_shows_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "--vae.optim.lr", "-1",
                          "--debug"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr


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
