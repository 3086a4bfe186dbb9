"""trainer.profile and the demo's profile table (benchmarks/demo_profile.py): the parts it reads from Lightning's
SimpleProfiler exist under the names it looks for, and nested actions are taken apart, not counted twice."""
from __future__ import annotations

import json

import pytest

from benchmarks.demo_profile import rows_of, stage_parts
from model.lightning.profile import PROFILE_FILE


def action(total_s: float, calls: int = 1) -> dict[str, float]:
    return {"total_s": total_s, "calls": calls}


def test_nested_actions_are_taken_apart_and_the_parts_add_up_to_the_wall_time():
    profile = {"wall_s": 20.0, "actions": {
        "run_training_epoch": action(15.0),  # holds everything below: never a part of its own
        "[LightningModule]DenoiserSystem.optimizer_step": action(10.0, 5),
        "[Strategy]SingleDeviceStrategy.training_step": action(3.0, 5),
        "[Strategy]SingleDeviceStrategy.backward": action(5.0, 5),
        "ema_update": action(0.5, 5),
        "[_TrainingEpochLoop].train_dataloader_next": action(1.0, 5),
        "[Callback]QualityDuringTraining.on_train_batch_end": action(4.0, 5),
        "save_checkpoint": action(2.0, 2),
    }}
    parts = stage_parts(profile)
    assert parts["forward and loss"] == 3.0 and parts["backward"] == 5.0 and parts["EMA update"] == 0.5
    assert parts["optimiser (clip, AdamW, zero grad)"] == pytest.approx(10.0 - 3.0 - 5.0 - 0.5)
    assert parts["quality evaluations (samples + metrics)"] == 4.0 and parts["checkpoints"] == 2.0
    assert sum(parts.values()) == pytest.approx(20.0)
    assert parts["Lightning loop and logging"] == pytest.approx(20.0 - 10.0 - 1.0 - 4.0 - 2.0)


def test_the_command_table_shares_add_up_to_the_wall_time():
    profile = {"wall_s": 4.0, "actions": {"[Strategy]SingleDeviceStrategy.training_step": action(1.0)}}
    rows = rows_of({"vae": profile, "denoiser": profile}, main_s=10.0, sample_s=2.0)
    *parts, whole = rows
    assert whole["s"] == 12.0 and sum(r["s"] for r in parts) == pytest.approx(12.0)
    assert sum(r["share %"] for r in parts) == pytest.approx(100.0)
    assert [r["s"] for r in parts if r["stage"] == "main"] == [pytest.approx(2.0)]  # 10 s minus the stages' 8 s


@pytest.mark.parametrize("stage", ["vae", "denoiser"])
def test_a_profiled_run_names_every_part_the_table_reads(tiny_runs, stage):
    """Lightning's action names are its internals: an upgrade that renames one empties a part, and this fails."""
    folder = tiny_runs["latent_run"].parent / stage
    profile = json.loads((folder / PROFILE_FILE).read_text())
    parts = stage_parts(profile)
    for part in ("forward and loss", "backward", "optimiser (clip, AdamW, zero grad)", "checkpoints",
                 "data (loading batches)"):
        assert parts[part] > 0, part
    assert sum(parts.values()) == pytest.approx(profile["wall_s"], rel=1e-6)
    assert (folder / "fit-profile.txt").is_file()  # Lightning's own table beside it
    if stage == "denoiser":  # the EMA is timed once per optimiser step
        assert profile["actions"]["ema_update"]["calls"] == 4 and parts["validation"] > 0
