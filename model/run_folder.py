"""Run folders: `<output_dir>/<name>-<n>/<stage>/`, and the checkpoint a run resumes from."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from model.config import Config
from model.errors import UserError


def run_dir(cfg: Config, n: int) -> Path:
    """`<output_dir>/<name>-<n>`: one folder per run, with a sub-folder per stage."""
    return Path(cfg.output_dir) / f"{cfg.name}-{n}"


def next_run_number(cfg: Config) -> int:
    n = 1
    while run_dir(cfg, n).exists():
        n += 1
    return n


def check_stage_folder(folder: Path, resuming: bool) -> None:
    """Refuse to write a fresh run over an earlier one's checkpoints (nothing written is lost)."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; remove it or choose another -n / output_dir")
    ckpts = list((folder / "checkpoints").glob("*.ckpt")) if folder.is_dir() else []
    if ckpts and not resuming:
        raise UserError(f"{folder} already holds checkpoints; resume with --load {folder}/checkpoints/last.ckpt "
                        f"or pick a new run number with -n")


def last_checkpoint(folder: Path, stage: str) -> Optional[Path]:
    """`<run>/<stage>/checkpoints/last.ckpt` when a previous allocation of this run wrote one."""
    path = folder / stage / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def newest_checkpoint(stage_dir: Path) -> Optional[tuple[Path, int]]:
    """(path, step) of the stage's checkpoint with the highest step (last.ckpt on a tie), or None. Every checkpoint
    under its final name is whole: they are written to a temporary name first (model/writes.py)."""
    from model.checkpoint import checkpoint_step

    found = []
    for path in (stage_dir / "checkpoints").glob("*.ckpt"):
        try:
            found.append((checkpoint_step(path), path.name == "last.ckpt", path))
        except Exception:  # noqa: BLE001  an unreadable file is not one to resume from
            continue
    if not found:
        return None
    step, _, path = max(found)
    return path, step
