"""Tiny text-conditioning material the tests make themselves: a CLIP text model with random weights and a
byte-level BPE tokenizer without merges (nothing downloaded), and a captioned folder of coloured squares."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (Radford et al. 2019): printable bytes map to themselves,
    the others to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    table = dict(zip(printable, printable)) | {b: 256 + i for i, b in enumerate(rest)}
    return [chr(table[b]) for b in range(256)]


def tiny_clip(folder: Path, width: int = 32, max_length: int = 16) -> Path:
    """A CLIP text model (2 layers, `width` wide) and its tokenizer saved as transformers does."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                  model_max_length=max_length).save_pretrained(folder)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def colour_squares(root: Path, per_colour: int = 30, size: int = 8) -> Path:
    """Noisy squares of three colours, one class sub-folder each, captioned "a <colour> square" in metadata.jsonl
    (with the colour in its field "colour")."""
    rng = np.random.default_rng(0)
    rows = []
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_colour):
            img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
            rows.append({"file_name": f"{name}/{i}.png", "text": f"a {name} square", "colour": name})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def text_run_args(root: Path, output: Path, encoder: str = "bytes", steps: int = 200, **more: str) -> list[str]:
    """Command-line overrides of config/digits.json: pixel-space text-to-image on `root` (8 px RGB)."""
    args = {"--output_dir": str(output), "--data.name": "folder", "--data.root": str(root), "--data.captions": "true",
            "--data.labels": "false", "--data.image_size": "8", "--data.channels": "3", "--data.batch_size": "16",
            "--vae.net.in_channels": "3", "--denoiser.autoencoder": "none", "--denoiser.unet.in_channels": "3",
            "--denoiser.unet.base_channels": "16", "--denoiser.unet.channel_mult": "[1, 2]",
            "--denoiser.unet.num_classes": "0", "--denoiser.unet.class_bias_size": "0",
            "--denoiser.unet.cross_attention_levels": "[1]",
            "--denoiser.unet.num_heads": "2", "--denoiser.text.encoder": encoder, "--denoiser.text.width": "32",
            "--denoiser.text.layers": "1", "--denoiser.text.heads": "2", "--denoiser.text.max_length": "16",
            "--denoiser.diffusion.cache_latents": "false", "--denoiser.trainer.max_steps": str(steps),
            "--denoiser.trainer.batch_size": "16", "--denoiser.trainer.fid_every_n_steps": "0",
            "--denoiser.trainer.val_every_n_steps": str(steps), "--denoiser.trainer.images_every_n_steps": "0",
            "--denoiser.trainer.progress_bar": "false", **more}
    return [item for pair in args.items() for item in pair]
