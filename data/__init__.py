"""LightningDataModules yielding (x, y): x float32 (B, C, H, W) in [-1, 1], y int64 (B,), -1 when unlabelled.

The data modules are Lightning modules; they are imported on first use (`data.make_datamodule`), so that reading a
config (`data.config`) does not import Lightning.
"""
from data.config import DataConfig

__all__ = ["DATAMODULES", "DataConfig", "chamfer_distance", "make_datamodule"]


def __getattr__(name: str):
    if name in ("DATAMODULES", "make_datamodule"):
        from data import registry

        return getattr(registry, name)
    if name == "chamfer_distance":
        from data.toy2d import chamfer_distance

        return chamfer_distance
    raise AttributeError(f"module 'data' has no attribute {name!r}")
