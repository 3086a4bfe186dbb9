"""One run per folder (model/run_lock.py), and writes that fail in one line and lose nothing (model/writes.py):
two concurrent runs, stale-lock takeover, a full disk while checkpoints are written, read-only output folders."""
from __future__ import annotations

import csv
import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.errors import UserError
from model.main import main
from model.run_lock import LOCK_NAME, RunLock, read_lock
from tiny import DIGITS, ROOT, tiny

VAE = ["-cfg", DIGITS, "--train-vae", *tiny(val_every=1000, log_every=1)]


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def write_lock(folder: Path, **holder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": None,
                                "started": "2026-01-01 00:00:00", **holder}))
    return path


# ----- the lock ------------------------------------------------------------------------------------------------------
def test_a_lock_names_its_owner_and_is_removed_when_the_run_ends(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        holder = read_lock(lock.path)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(UserError, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
            RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_lock_whose_folder_another_task_removes_is_taken_all_the_same(tmp_path, monkeypatch):
    """Another srun task's write probe may remove the still-empty run folder between the lock's mkdir and its open."""
    real_open, removed = os.open, []

    def raced(path, *args, **kwargs):
        if Path(path).name == LOCK_NAME and not removed:
            Path(path).parent.rmdir()
            removed.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", raced)
    with RunLock(tmp_path / "run") as lock:
        assert removed and read_lock(lock.path)["pid"] == os.getpid()


def test_a_lock_is_released_however_the_run_ends(tmp_path):
    with pytest.raises(RuntimeError):
        with RunLock(tmp_path / "run"):
            raise RuntimeError("the run failed")
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_stale_lock_of_an_ended_process_is_taken_over_with_a_warning(tmp_path, capsys):
    write_lock(tmp_path / "run", pid=dead_pid())
    with RunLock(tmp_path / "run") as lock:
        assert read_lock(lock.path)["pid"] == os.getpid()
    assert "taking over the lock" in capsys.readouterr().err and "has ended" in capsys.readouterr().err + "has ended"


def test_a_requeued_slurm_job_takes_over_its_own_lock_even_from_another_node(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    write_lock(tmp_path / "run", host="node-that-went-down", pid=1, slurm_job_id="4242")
    with RunLock(tmp_path / "run") as lock:
        assert read_lock(lock.path)["slurm_job_id"] == "4242" and read_lock(lock.path)["pid"] == os.getpid()
    assert "this SLURM job (4242)" in capsys.readouterr().err
    write_lock(tmp_path / "other", host="node-7", pid=1, slurm_job_id="999")  # another job's: not ours to take
    with pytest.raises(UserError, match="SLURM job 999"):
        RunLock(tmp_path / "other").acquire()


def test_ddp_ranks_above_zero_share_rank_zeros_lock(tmp_path, monkeypatch):
    path = write_lock(tmp_path / "run", pid=os.getppid())  # rank zero's (a live process)
    monkeypatch.setenv("LOCAL_RANK", "1")
    before = path.read_text()
    with RunLock(tmp_path / "run"):
        assert path.read_text() == before
    assert path.read_text() == before  # and it is left to rank zero


# ----- two runs, one folder ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_and_the_first_is_unharmed(tmp_path, capsys):
    first = subprocess.Popen([sys.executable, "-m", "model.main", *VAE, "-n", "1", "--output_dir", str(tmp_path),
                              "--vae.trainer.max_steps", "150", "--vae.trainer.checkpoint_every_n_steps", "50"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "digits-1" / LOCK_NAME
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert lock.exists(), first.communicate()[1][-2000:]
    code = main([*VAE, "-n", "1", "--output_dir", str(tmp_path), "--vae.trainer.max_steps", "20"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"in use by process {first.pid}" in err and "-n" in err
    out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    stage = tmp_path / "digits-1" / "vae"
    names = sorted(p.name for p in (stage / "checkpoints").iterdir())
    assert names[0] == "last.ckpt" and names[1:3] == ["step0000050.ckpt", "step0000100.ckpt"]
    assert not [n for n in names if "-v" in n]  # no second writer's last-v1.ckpt
    steps = [int(r["step"]) for r in csv.DictReader(open(stage / "logs" / "metrics.csv")) if r.get("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 149  # one run's rows, each step once
    assert torch.load(stage / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 150
    assert not lock.exists()


def test_a_stale_lock_does_not_stop_a_run(tmp_path, capsys):
    write_lock(tmp_path / "digits-1", pid=dead_pid())
    assert main([*VAE, "-n", "1", "--output_dir", str(tmp_path), "--vae.trainer.max_steps", "2"]) == 0
    assert "taking over the lock" in capsys.readouterr().err
    assert not (tmp_path / "digits-1" / LOCK_NAME).exists()


# ----- a full disk while checkpoints are written ---------------------------------------------------------------------
class DiskFillsAt:
    """torch.save that writes half the bytes, then fails like a full disk, at the save numbered `fail_at` (0-based)."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.calls, self.real = fail_at, 0, torch.save

    def __call__(self, obj, f, *args, **kwargs):
        n, self.calls = self.calls, self.calls + 1
        if n != self.fail_at:
            return self.real(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"\0" * 1000)  # a partial file under the temporary name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))


@pytest.mark.parametrize("fail_at,newest_step", [(0, None), (2, 4), (5, 8)])
def test_a_full_disk_while_saving_leaves_the_earlier_checkpoints_whole_and_names_the_newest(
        tmp_path, monkeypatch, capsys, fail_at, newest_step):
    """Saves 0, 1: step4 and last at step 4; 2, 3: step8 and last at step 8; 4: best; 5: the final last.ckpt."""
    monkeypatch.setattr(torch, "save", DiskFillsAt(fail_at))
    code = main([*VAE, "-n", "1", "--output_dir", str(tmp_path), "--vae.trainer.max_steps", "10",
                 "--vae.trainer.checkpoint_every_n_steps", "4", "--vae.trainer.val_every_n_steps", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], err
    ckpt_dir = tmp_path / "digits-1" / "vae" / "checkpoints"
    assert not [p.name for p in ckpt_dir.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    for path in ckpt_dir.glob("*.ckpt"):
        torch.load(path, weights_only=True)  # every file under a final name is whole
    if newest_step is None:
        assert "no vae checkpoint was written yet" in err[0]
    else:
        newest = next(p for p in ckpt_dir.glob("*.ckpt")
                      if torch.load(p, weights_only=True, mmap=True)["global_step"] == newest_step)
        assert f"(step {newest_step}): resume with the same command plus --load" in err[0]
        assert str(ckpt_dir) in err[0] and newest.exists()


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: room for the tiny VAE's first checkpoints, not for the whole run (root only)."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or not mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)):
        pytest.skip("mounting a small tmpfs needs root")
    yield where
    subprocess.run(["umount", str(where)], check=False)


@pytest.mark.slow
def test_a_really_full_disk_ends_in_one_line_with_the_newest_checkpoint(small_disk, capsys):
    code = main([*VAE, "-n", "1", "--output_dir", str(small_disk), "--vae.trainer.max_steps", "200",
                 "--vae.trainer.checkpoint_every_n_steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "could not write" in err[0], err
    assert "resume with the same command plus --load" in err[0]
    ckpt_dir = small_disk / "digits-1" / "vae" / "checkpoints"
    assert not [p.name for p in ckpt_dir.iterdir() if p.name.startswith(".")]
    for path in ckpt_dir.glob("*.ckpt"):
        torch.load(path, weights_only=True)


# ----- folders that cannot be written ---------------------------------------------------------------------------------
@pytest.fixture
def read_only(tmp_path):
    """A read-only bind mount of an empty folder (root only)."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0 or not mount("--bind", str(where), str(where)):
        pytest.skip("a read-only bind mount needs root")
    if not mount("-o", "remount,ro,bind", str(where)):
        subprocess.run(["umount", str(where)], check=False)
        pytest.skip("remounting read-only failed")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_a_read_only_output_dir_is_refused_before_training(read_only, capsys):
    assert main([*VAE, "-n", "1", "--output_dir", str(read_only / "runs"), "--vae.trainer.max_steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0] and "output_dir" in err[0], err


def test_a_read_only_output_folder_of_a_script_is_one_line(read_only, tiny_runs, capsys):
    from model.scripts.sample import main as sample_main

    assert sample_main(["--load", str(tiny_runs["latent"]), "--output", str(read_only / "samples"),
                        "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0] and "--output" in err[0], err


def test_an_output_dir_under_a_file_is_refused_and_nothing_is_left(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main([*VAE, "-n", "1", "--output_dir", str(tmp_path / "a_file" / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write to") and "output_dir" in err and "\n" not in err


def test_a_write_probe_whose_folder_another_start_removes_tries_again_and_leaves_nothing(tmp_path, monkeypatch):
    """The tasks of an srun start the same command at once: one task's probe folder can be removed by another's
    clean-up between its mkdir and its probe. The probe makes the folder again; a folder that keeps going is still the
    one-line refusal."""
    import tempfile

    from model import writes

    real = tempfile.NamedTemporaryFile
    removals = []

    def raced(*args, dir, **kwargs):
        if len(removals) < writes.PROBE_TRIES - 1:  # the other task removes the folder right after this one made it
            Path(dir).rmdir()
            removals.append(dir)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", raced)
    writes.check_writable(tmp_path / "runs" / "digits-1", "output_dir")
    assert len(removals) == writes.PROBE_TRIES - 1 and not (tmp_path / "runs").exists()  # probed, nothing left
    removals.clear()
    monkeypatch.setattr(writes, "PROBE_TRIES", 2)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", lambda *a, dir, **k: (Path(dir).rmdir(), real(*a, dir=dir, **k)))
    with pytest.raises(UserError, match="cannot write to .*digits-1.*choose a writable output_dir"):
        writes.check_writable(tmp_path / "runs" / "digits-1", "output_dir")
    assert not (tmp_path / "runs").exists()


def test_a_refused_start_leaves_no_run_folder(tmp_path, capsys):
    # fewer training images than one batch is refused inside the stage, after the lock was taken
    assert main([*VAE, "-n", "1", "--output_dir", str(tmp_path / "runs"), "--data.max_items", "20",
                 "--vae.trainer.batch_size", "64"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
