"""A frozen pretrained text encoder, a CLIP text model (Radford et al. 2021) or a T5 encoder (Raffel et al. 2020),
read with `transformers` from a local folder only (nothing is downloaded).

The folder is transformers' save_pretrained layout: config.json, the weights (model.safetensors or
pytorch_model.bin) and the tokenizer's files (tokenizer.json or vocab.json + merges.txt, tokenizer_config.json).
A Stable Diffusion folder keeps them apart, in text_encoder/ and tokenizer/: give both as `encoder_path` and
`tokenizer_path`. The condition is the last hidden state (B, L, D), as latent diffusion and Stable Diffusion use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from model.errors import UserError

CLIP_TYPES = ("clip_text_model", "clip")
T5_TYPES = ("t5", "mt5", "umt5")
LAYOUT = ("a folder in transformers' save_pretrained layout: config.json, model.safetensors (or pytorch_model.bin) "
          "and the tokenizer's files (tokenizer.json, or vocab.json and merges.txt)")


def folder_config(path: str) -> dict:
    """config.json of an encoder folder, or a one-line error naming the layout it needs."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise UserError(f"{path} holds no text encoder ({file.name} is missing); give {LAYOUT}")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not valid JSON ({err}); give {LAYOUT}") from None
    kind = config.get("model_type")
    if kind not in CLIP_TYPES + T5_TYPES:
        raise UserError(f"{path} holds a {kind!r} model; the text encoder must be a CLIP text model or a T5 encoder")
    return config


def text_width(path: str) -> int:
    """The width D of the encoder's hidden states, read from its config.json without loading it."""
    config = folder_config(path)
    if config["model_type"] == "clip":
        config = config.get("text_config", {})
    return int(config.get("hidden_size") or config.get("d_model"))


class PretrainedTextEncoder:
    """Prompts → the frozen encoder's last hidden state (B, L, D) and the attention mask (B, L)."""

    def __init__(self, encoder_path: str, tokenizer_path: Optional[str] = None, max_length: Optional[int] = None,
                 device="cpu") -> None:
        kind = folder_config(encoder_path)["model_type"]
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel
        from transformers.utils import logging

        logging.disable_progress_bar()  # a bar per load would bury the command's own output

        cls = CLIPTextModel if kind in CLIP_TYPES else T5EncoderModel
        try:
            self.model = cls.from_pretrained(encoder_path, local_files_only=True).eval().requires_grad_(False)
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or encoder_path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load the text encoder in {encoder_path} ({str(err).splitlines()[0]}); give "
                            f"{LAYOUT}") from None
        self.to(device)
        # the encoder's position table bounds the length (CLIP: 77)
        self.max_length = min(max_length or self.tokenizer.model_max_length, self.tokenizer.model_max_length)
        self.width = text_width(encoder_path)

    def to(self, device) -> "PretrainedTextEncoder":
        self.model.to(device)
        return self

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(input ids (B, L), mask (B, L) bool), padded to max_length as the model was trained (CLIP: 77)."""
        out = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        return out.input_ids, out.attention_mask.bool()

    @torch.no_grad()
    def encode(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        device = self.model.device
        return self.model(tokens.to(device), attention_mask=None if mask is None else mask.to(device)).last_hidden_state

    def condition(self, prompts: Sequence[str], device=None) -> dict[str, Tensor]:
        """The prompt part of a `Condition`: the encoded prompt and its mask."""
        tokens, mask = self.tokenize(prompts)
        return {"context": self.encode(tokens, mask).to(device), "mask": mask.to(device)}
