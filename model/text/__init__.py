"""Text encoders: prompts → the token sequence a denoiser's cross-attention reads (`model/conditioning.py`).

Two implementations of one interface, `condition(prompts, device) -> dict` (the prompt fields of a `Condition`):

- `ByteTokenizer` + `ByteTextEncoder` (`denoiser.text.encoder: bytes`): needs no downloaded files and trains with
  the denoiser; the tokenizer gives tokens and the encoder is part of the network (`PromptedNetwork`), so it is in
  the EMA copy and the checkpoint;
- `PretrainedTextEncoder` (`pretrained`): a frozen CLIP text model or T5 encoder from a local folder; it gives the
  encoded prompt, and the checkpoint keeps the folder's path, not its weights.
"""
from __future__ import annotations

from model.text.byte_encoder import ByteTextEncoder, ByteTokenizer
from model.text.config import TextConfig
from model.text.pretrained import PretrainedTextEncoder, text_width


def prompt_encoder(cfg: TextConfig, device="cpu"):
    """What turns prompts into the prompt fields of a condition: None without text."""
    if cfg.encoder == "bytes":
        return ByteTokenizer(cfg.max_length)
    if cfg.encoder == "pretrained":
        return PretrainedTextEncoder(cfg.path, max_length=cfg.max_length, device=device)
    return None


def context_width(cfg: TextConfig) -> int:
    """The width of the encoded prompt the UNet attends to (0 without text)."""
    if cfg.encoder == "bytes":
        return cfg.width
    if cfg.encoder == "pretrained":
        return text_width(cfg.path)
    return 0


__all__ = ["ByteTextEncoder", "ByteTokenizer", "PretrainedTextEncoder", "TextConfig", "context_width",
           "prompt_encoder", "text_width"]
