"""What the command-line scripts share: the device to run on and the output folder beside a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from model.errors import UserError


def resolve_device(name: str) -> str:
    """`auto` → cuda when a GPU is visible, else cpu; asking for cuda without one is a UserError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no GPU is visible; use --device cpu")
    return name


def output_folder(output: Optional[str], checkpoint: str, default_name: str) -> Path:
    """`--output`, or `<run>/<stage>/<default_name>` beside the checkpoint's `checkpoints/` folder; created."""
    out = Path(output) if output else Path(checkpoint).resolve().parent.parent / default_name
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file, not a folder; pick a folder path")
    out.mkdir(parents=True, exist_ok=True)
    return out
