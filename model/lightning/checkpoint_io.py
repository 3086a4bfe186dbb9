"""Checkpoints written atomically: a process killed while saving leaves the previous file whole.

Lightning's TorchCheckpointIO writes the final path directly, so a kill mid-write leaves a truncated `last.ckpt`;
`model.checkpoint.atomic_torch_save` writes a temporary sibling and renames it over the target instead.
"""
from __future__ import annotations

from typing import Any, Optional

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from model.checkpoint import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are atomic (loading and removal are Lightning's own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        atomic_torch_save(checkpoint, path)
