"""Where a stage's time goes: Lightning's SimpleProfiler, its totals also kept as JSON for benchmarks to read."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pytorch_lightning.profilers import SimpleProfiler

from model.config import TrainerConfig

PROFILE_FILE = "profile.json"


def stage_profiler(tc: TrainerConfig, folder: Path) -> Optional[SimpleProfiler]:
    """A profiler when trainer.profile asks for one; Lightning writes its table to folder/fit-profile.txt."""
    return SimpleProfiler(dirpath=str(folder), filename="profile") if tc.profile else None


def profile_totals(profiler: SimpleProfiler, wall_s: float) -> dict[str, Any]:
    """{"wall_s", "actions": {Lightning action: {"calls", "total_s"}}}; actions nest (an optimiser step holds the
    training step and the backward pass), so their totals do not add up to the wall time."""
    actions = {name: {"calls": len(d), "total_s": float(sum(d))} for name, d in profiler.recorded_durations.items()}
    return {"wall_s": wall_s, "actions": actions}


def write_profile(profiler: SimpleProfiler, folder: Path, wall_s: float) -> None:
    from model.writes import write_text

    write_text(folder / PROFILE_FILE, json.dumps(profile_totals(profiler, wall_s), indent=2) + "\n")
