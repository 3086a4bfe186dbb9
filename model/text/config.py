"""The text-encoder section of a denoiser config, `denoiser.text` (model/text/__init__.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from model.errors import UserError


@dataclass
class TextConfig:
    """Which encoder turns a prompt into the tokens the UNet's cross-attention reads."""

    # none: no prompts; bytes: a small transformer over UTF-8 bytes, trained with the denoiser (no files needed);
    # pretrained: a frozen CLIP text model or T5 encoder with its tokenizer, from the local folder `path`
    encoder: Literal["none", "bytes", "pretrained"] = "none"
    path: Optional[str] = None  # pretrained: a folder in transformers' save_pretrained layout (config.json, weights,
    #                             tokenizer files), e.g. the text_encoder/ and tokenizer/ of a Stable Diffusion folder
    max_length: int = 64  # tokens per prompt; longer prompts are cut (bytes: 62 bytes between BOS and EOS)
    width: int = 128  # bytes: the token width, also the UNet's context width
    layers: int = 2  # bytes: transformer layers
    heads: int = 4  # bytes: attention heads; must divide width

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        check(self.encoder in ("none", "bytes", "pretrained"),
              f"denoiser.text.encoder must be none, bytes or pretrained, got {self.encoder!r}")
        check(self.encoder != "pretrained" or bool(self.path),
              "denoiser.text.encoder is pretrained but denoiser.text.path is not set; give the folder of a CLIP text "
              "model or T5 encoder (with its tokenizer), or use encoder bytes")
        check(self.max_length >= 3, f"denoiser.text.max_length must be >= 3, got {self.max_length}; try 64")
        check(self.width > 0 and self.layers >= 1 and self.heads > 0,
              f"denoiser.text.width, layers and heads must be positive, got {self.width}, {self.layers}, {self.heads}")
        check(self.width % self.heads == 0,
              f"denoiser.text.heads={self.heads} does not divide denoiser.text.width={self.width}; try heads 4")

    @property
    def on(self) -> bool:
        return self.encoder != "none"
