"""The files a trained denoiser lives in: the training checkpoint (`checkpoint_contents`) and the export, a folder
anyone can load: tensors in safetensors files (loading runs no code), the config as JSON and a model card.

    DIR/config.json            the resolved config the model was trained with
    DIR/denoiser.safetensors   the EMA network ("net.*"), its autoguidance guide where training kept one ("guide.*")
                               and the latent statistics ("latent_shift", "latent_scale");
                               metadata: format, num_classes, global_step
    DIR/vae.safetensors        the frozen VAE (latent models only)
    DIR/README.md              the model card: data, image size, steps trained, sampler defaults, evaluation figures

`model.pipeline.LatentDiffusionPipeline.from_pretrained(DIR)` reads it back without Lightning.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from torch import Tensor

from model.errors import UserError

FORMAT = "latent-diffusion-lightning/export-1"
FILES = ("config.json", "denoiser.safetensors")  # every export has these; latent models also vae.safetensors


def export_tensors(tensors: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """{"denoiser": {...}, "vae": {...}}: the file contents of the pipeline's state dicts, contiguous CPU tensors."""
    def plain(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in d.items()}

    files = {"denoiser": {**{f"net.{k}": v for k, v in plain(tensors["denoiser"]).items()},
                          **{f"guide.{k}": v for k, v in plain(tensors.get("guide") or {}).items()}}}
    if tensors.get("autoencoder"):
        files["denoiser"].update(latent_shift=tensors["latent"]["shift"].cpu(), latent_scale=tensors["latent"]["scale"].cpu())
        files["vae"] = plain(tensors["autoencoder"])
    return files


def write_export(out: Path, config: dict[str, Any], num_classes: int, global_step: int,
                 tensors: dict[str, dict[str, Tensor]], card: str) -> list[Path]:
    """Write the export's files into `out` (each through a temporary name, so no partial file is left under a final
    name); returns the paths written."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from model.writes import atomic_write, write_text

    def tensors_file(content: dict[str, Tensor]):
        def write(tmp: Path) -> None:
            try:
                save_file(content, str(tmp), metadata)
            except SafetensorError as err:  # its writer's error, e.g. on a full disk: reported like torch's
                raise RuntimeError(str(err)) from err
            tmp.chmod(0o644)  # safetensors creates its files owner-only; an export is meant to be shared
        return write

    metadata = {"format": FORMAT, "num_classes": str(num_classes), "global_step": str(global_step)}
    written = [atomic_write(out / f"{name}.safetensors", tensors_file(content))
               for name, content in export_tensors(tensors).items()]
    written.append(write_text(out / "config.json", json.dumps(config, indent=2) + "\n"))
    written.append(write_text(out / "README.md", card))
    return written


def read_export(folder: Path):
    """(Config, number of classes, {"denoiser", "autoencoder", "latent"} state dicts) of an export folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from model.checkpoint import tensors_under
    from model.cli_config import from_dict

    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} is not an export of this package ({missing[0]} is missing); make one with "
                        f"python -m model.scripts.export --load <denoiser .ckpt> --output {folder}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{folder / 'config.json'} is not valid JSON ({err.msg}, line {err.lineno}); re-export the "
                        f"model") from err
    cfg = from_dict(config)
    try:
        den = load_file(str(folder / "denoiser.safetensors"))
        meta = _metadata(folder / "denoiser.safetensors")
        vae = load_file(str(folder / "vae.safetensors")) if cfg.denoiser.autoencoder == "vae" else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"the export {folder} has an unreadable tensor file ({str(err).splitlines()[0][:100]}); "
                        f"re-export the model") from err
    if meta.get("format") != FORMAT:
        raise UserError(f"{folder / 'denoiser.safetensors'} is not a denoiser export of this package (format "
                        f"{meta.get('format')!r}); re-export the model")
    tensors = {"denoiser": tensors_under(den, "net"), "guide": tensors_under(den, "guide"), "autoencoder": vae,
               "latent": {"shift": den.get("latent_shift"), "scale": den.get("latent_scale")}}
    return cfg, int(meta["num_classes"]), tensors


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


# ----- the model card ----------------------------------------------------------------------------------------------


def model_card(cfg, num_classes: int, global_step: int, source: str, evaluation: Optional[dict]) -> str:
    """README.md of an export: what the model is, how to load it, and its measured figures when there are any."""
    data, diff = cfg.data, cfg.denoiser.diffusion
    latent = (f"latent diffusion on a β-VAE with {cfg.vae.net.latent_channels} latent channels, downsampling factor "
              f"{cfg.vae.net.downsample_factor}" if cfg.denoiser.autoencoder == "vae" else "pixel-space diffusion")
    classes = f"class-conditional ({num_classes} classes, null class {num_classes} for guidance)" if num_classes \
        else "unconditional"
    lines = [f"# {cfg.name}", "",
             f"A {latent}: {classes}, trained {global_step} optimiser steps on `{data.name}` at "
             f"{data.image_size}×{data.image_size} px, {data.channels} channel(s). Exported from `{source}`.", "",
             "```python",
             "from model.pipeline import LatentDiffusionPipeline",
             "pipe = LatentDiffusionPipeline.from_pretrained(\"<this folder>\")",
             f"images = pipe(16, class_labels={'[0] * 16' if num_classes else 'None'}, sampler=\"dpmpp_2m\", "
             f"steps=20, seed=0)  # uint8 (16, H, W, C)",
             "```", "",
             f"Diffusion: {objective_text(diff)}; training "
             f"samples with {diff.sampler}, {diff.sample_steps} steps. Weights: the EMA network (decay "
             f"{diff.ema_decay}); `config.json` holds every setting.", ""]
    lines += evaluation_section(evaluation) if evaluation else ["No evaluation of this checkpoint was found (run "
                                                                "`python -m model.scripts.evaluate --load <ckpt>` "
                                                                "before exporting to include its figures).", ""]
    return "\n".join(lines)


def objective_text(diff) -> str:
    """e.g. "T = 1000, cosine schedule, v-parametrisation" or "rectified flow (velocity target), T = 1000 grid"."""
    if diff.objective == "vp":
        return f"T = {diff.T}, {diff.schedule} schedule, {diff.parametrisation}-parametrisation"
    names = {"flow": "rectified flow (velocity target)", "edm": f"EDM preconditioning (sigma_data {diff.sigma_data})"}
    return f"{names[diff.objective]}, sampled on a {diff.T}-step grid"


def evaluation_section(report: dict) -> list[str]:
    """The figures of `model.scripts.evaluate`'s evaluation.json, as Markdown."""
    from model.metrics.budget import as_markdown

    lines = ["## Evaluation", "", f"`model.scripts.evaluate`: {report['sampler']}, {report['num_samples']} samples per "
             f"guidance scale, seed {report['seed']}.", ""]
    if "scales" in report:
        lines += ["| w | FID | class accuracy |", "|---|---|---|"]
        lines += [f"| {s['cfg_scale']:g} | {s['fid']:.4f} | " + (f"{s['accuracy']:.3f}" if "accuracy" in s else "n/a")
                  + " |" for s in report["scales"]]
        lines += ["", f"Real floor: {report['real_baseline']['images']} real images score FID "
                      f"{report['real_baseline']['fid']:.4f} ({report['fid_protocol']['extractor']}).", ""]
    if "pixel_budget" in report:
        lines += [as_markdown(report["pixel_budget"]), ""]
    return lines


def find_evaluation(checkpoint: Path) -> Optional[dict]:
    """evaluation/evaluation.json beside the checkpoint's folder, if it evaluated this very checkpoint."""
    path = checkpoint.resolve().parent.parent / "evaluation" / "evaluation.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if Path(report.get("denoiser", "")).resolve() == checkpoint.resolve() else None


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload the export folder to the Hugging Face hub as model repository `repo_id`; its URL. Offline, without a
    token or with the hub unreachable: one line that says what to do."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import OfflineModeIsEnabled
    except ImportError as err:
        raise UserError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from err

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message="Upload a latent-diffusion-lightning export")
    except OfflineModeIsEnabled as err:
        raise UserError(f"the Hugging Face hub is switched off (HF_HUB_OFFLINE); the export is in {folder}: unset "
                        f"HF_HUB_OFFLINE and run the command again, or upload the folder later") from err
    except Exception as err:  # the network boundary: HTTP errors, no connection, no token, a bad repo name
        raise UserError(f"could not push to the Hugging Face hub ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:100] if str(err) else 'no answer'}); the export is in {folder}: "
                        f"log in with `huggingface-cli login` (or set HF_TOKEN) and check the network, then run "
                        f"the command again") from err
    return f"https://huggingface.co/{repo_id}"


def checkpoint_contents(path: Path) -> tuple[dict[str, Any], int, int, dict[str, dict[str, Tensor]]]:
    """(config dict, number of classes, global step, state dicts) of a denoiser training checkpoint; the guide's
    only once training has filled it."""
    from model.checkpoint import CONFIG_KEY, EXTRA_KEY, read_checkpoint, state_dict_under

    ckpt = read_checkpoint(path, expected="denoiser")
    state, step = ckpt["state_dict"], int(ckpt.get("global_step", 0))
    ready = bool(state.get("guide_ready", False))  # before its step the guide is a copy of the initial network
    tensors = {"denoiser": state_dict_under(ckpt, "ema"), "guide": state_dict_under(ckpt, "guide") if ready else {},
               "autoencoder": state_dict_under(ckpt, "autoencoder"),
               "latent": {"shift": state["latent_shift"], "scale": state["latent_scale"]}}
    return ckpt[CONFIG_KEY], int(ckpt.get(EXTRA_KEY, {}).get("num_classes", 0)), step, tensors
