"""LightningDataModules yielding (x, y): x float32 (B, C, H, W) in [-1, 1], y int64 (B,), -1 when unlabelled."""
from data.config import DataConfig
from data.registry import DATAMODULES, make_datamodule
from data.toy2d import chamfer_distance

__all__ = ["DATAMODULES", "DataConfig", "chamfer_distance", "make_datamodule"]
