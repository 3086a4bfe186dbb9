"""Turning [-1, 1] tensors into image files: grids, single PNGs, uint8 arrays and GIFs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → (N, H, W, C) uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(img: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 → PIL image (grey when C = 1)."""
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def grid_array(x: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → one (H', W', C) uint8 mosaic with `nrow` images per row."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    rows = (n + nrow - 1) // nrow
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return out


def save_png(img: Image.Image, path: Path) -> Path:
    """A PIL image as a PNG file, written atomically (`model.writes.atomic_write`)."""
    from model.writes import atomic_write

    return atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


def save_grid(x: torch.Tensor, path: Path, nrow: int) -> Path:
    return save_png(to_pil(grid_array(x, nrow)), path)


def save_gif(frames: list[np.ndarray], path: Path, ms_per_frame: int = 150) -> Path:
    """Frames (H, W, C) uint8 → an animated GIF that holds the last frame a little longer."""
    pil = [to_pil(f) for f in frames]
    durations = [ms_per_frame] * (len(pil) - 1) + [ms_per_frame * 6]
    from model.writes import atomic_write

    return atomic_write(Path(path), lambda tmp: pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:],
                                                            duration=durations, loop=0))


def labelled_rows(x: torch.Tensor, labels: list[str], nrow: int, min_cell: int = 64) -> Image.Image:
    """A grid with one row per label, the label written left of its row; cells are enlarged (nearest, so pixels
    stay sharp) to at least `min_cell` px so that small images and text can be read side by side."""
    from PIL import ImageDraw, ImageFont

    scale = max(1, -(-min_cell // x.shape[-1]))  # ceil
    grid = to_pil(grid_array(x, nrow))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(grid)
    margin = 8 + max((int(draw.textlength(label, font=font)) for label in labels), default=0)
    canvas = Image.new(grid.mode, (grid.width + margin, grid.height), "white")
    canvas.paste(grid, (margin, 0))
    row_height = grid.height / max(1, len(labels))
    text = ImageDraw.Draw(canvas)
    for r, label in enumerate(labels):
        text.text((4, int((r + 0.5) * row_height) - 6), label, fill="black", font=font)
    return canvas
