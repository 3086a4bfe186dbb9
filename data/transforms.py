"""Image transforms: PIL mode normalisation, make square, resize, flip, scale to [-1, 1].

PIL images (folder, Hugging Face) go through `ImageTransform`; uint8/float tensors already in memory
(digits, MNIST, CIFAR-10) go through `tensor_to_model_range`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

# Pillow's 16/32-bit integer grey modes. "I" is how Pillow opens some 16-bit PNG/TIFF files, so its values
# are taken to span 0..65535 like the I;16 variants.
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA", "P")  # P may carry a transparent palette index
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, the weights Pillow's convert("L") uses


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """Rescale a 16-bit grey image to 8 bits: v8 = round(v16 / 257), so 65535 -> 255 (no wrap or clipping)."""
    arr = np.asarray(img).astype(np.float64)  # (H, W), uint16 or int32 values
    arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Flatten transparency onto a white background (transparent pixels become white), returns RGB."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to "L" (channels=1) or "RGB" (channels=3).

    Grey L stays; RGBA/LA/PA and palette P are composited on white; CMYK, YCbCr, LAB, HSV go through Pillow's
    RGB conversion; 16-bit I;16 / I are rescaled to 8 bits; 1-bit and float F go through Pillow's L conversion.
    """
    if img.mode in _WIDE_GREY_MODES:
        img = _wide_grey_to_l(img)
    elif img.mode in _ALPHA_MODES:
        img = _composite_on_white(img)
    elif img.mode not in ("L", "RGB"):
        img = img.convert("L" if img.mode in ("1", "F") else "RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def to_square(img: Image.Image, crop: str) -> Image.Image:
    """Make the image square: "center" crops the longer side, "pad" adds black borders to the shorter one."""
    w, h = img.size
    if w == h:
        return img
    if crop == "center":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side))
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), 0)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit L or RGB image -> float32 (C, H, W) in [-1, 1] (0 -> -1, 255 -> +1)."""
    arr = np.asarray(img, dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).float()
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)  # (H, W[, C]) -> (C, H, W)
    return x / 127.5 - 1.0


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror the width axis with probability 1/2."""
    return x.flip(-1) if bool(torch.rand(()) < 0.5) else x


class ImageTransform:
    """PIL image of any mode and size -> float32 (channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, image_size: int, channels: int, crop: str = "center", hflip: bool = False) -> None:
        self.image_size, self.channels, self.crop, self.hflip = image_size, channels, crop, hflip

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = ImageOps.exif_transpose(img)  # camera photos: honour the EXIF orientation tag
        img = to_mode(img, self.channels)
        img = to_square(img, self.crop)
        if img.size != (self.image_size, self.image_size):
            # Pillow's bicubic widens its kernel when shrinking, i.e. it antialiases.
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        x = pil_to_tensor(img)
        return random_hflip(x) if self.hflip else x


def tensor_to_model_range(x: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """One square image (C, H, W), uint8 in 0..255 or float in [0, 1] -> float32 (channels, S, S) in [-1, 1].

    Resizing is bilinear with antialiasing; 3 -> 1 channels uses the luma weights, 1 -> 3 repeats the channel.
    """
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[0] != channels:
        if channels == 1:
            x = (x * torch.tensor(_GREY_WEIGHTS).view(3, 1, 1)).sum(0, keepdim=True)  # (1, H, W)
        else:
            x = x.expand(3, -1, -1)  # (3, H, W)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        size = (image_size, image_size)
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]  # (C, S, S)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()
