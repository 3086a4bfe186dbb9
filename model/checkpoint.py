"""Reading our checkpoints safely: `weights_only=True`, a kind tag, and one-line errors for bad files.

Every checkpoint this package writes carries `ldm_kind` ("vae", "denoiser", "classifier" or "fid_stats"); the two
training systems also carry `ldm_config` (the resolved config as plain JSON types), so a file knows what it is and
how to rebuild its networks. Loading never
unpickles arbitrary objects: a file that needs that is refused, because unpickling can run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import torch

from model.errors import UserError

Kind = Literal["vae", "denoiser", "classifier", "fid_stats"]
UNCONFIGURED: tuple[Kind, ...] = ("classifier", "fid_stats")  # plain files; every other kind carries its config
KIND_KEY = "ldm_kind"
CONFIG_KEY = "ldm_config"
EXTRA_KEY = "ldm_extra"  # small plain values a system needs to rebuild itself (e.g. num_classes)


# where each kind of file goes, for the error when one is passed where another kind is needed
USED_WITH = {"vae": "a vae checkpoint goes to --load-vae (or sample_vae --load)",
             "denoiser": "a denoiser checkpoint goes to sample --load or to --train-denoiser --load",
             "classifier": "a classifier goes to --classifier",
             "fid_stats": "FID reference statistics are read by model.scripts.evaluate from its --stats-cache folder"}


def read_checkpoint(path: str | Path, expected: Kind | None = None) -> dict[str, Any]:
    """Load a checkpoint dict of this package on CPU with `weights_only=True` and check its kind.

    Every kind but those in UNCONFIGURED must also carry its config.
    """
    path = Path(path)
    ckpt = load_torch_file(path)
    kind = ckpt.get(KIND_KEY) if isinstance(ckpt, dict) else None
    if kind is None:
        raise UserError(f"{path} is not a checkpoint of this package (no '{KIND_KEY}' entry)")
    if expected is not None and kind != expected:
        raise UserError(f"{path} is a {kind} checkpoint, but a {expected} is needed here; "
                        f"{USED_WITH.get(kind, 'pass a file of the right kind')}")
    if kind not in UNCONFIGURED and CONFIG_KEY not in ckpt:
        raise UserError(f"checkpoint {path} has no stored config ('{CONFIG_KEY}'); it was not written by this package")
    return ckpt


def load_torch_file(path: Path) -> Any:
    """torch.load on CPU with weights_only=True; a missing, empty, corrupt or code-carrying file is a UserError."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"checkpoint {path} {what}; pass the path of a checkpoint file")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); use an earlier checkpoint such as last.ckpt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "allowed global" in str(err) or "Unsupported global" in str(err):  # a class or function to import and call
            raise UserError(f"checkpoint {path} holds pickled objects that could run code on load; refused "
                            f"(only files written by this package are read)") from err
        raise UserError(f"checkpoint {path} is not a readable torch file (truncated or corrupt)") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"checkpoint {path} is not a readable torch file (truncated or corrupt): "
                        f"{str(err).splitlines()[0][:120]}") from err


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary sibling, flushed to disk, then renamed over `path` (`model.writes.atomic_write`):
    a kill or a full disk mid-save leaves the previous file whole and no partial file under the final name."""
    from model.writes import atomic_write

    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp), sync=True)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, bit for bit, with their names: which exact weights a file came from."""
    import hashlib

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_step(path: str | Path) -> int:
    """The optimiser step a checkpoint was saved at (memory-mapped: the weights are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))


def state_dict_under(ckpt: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of the module state dict that start with `prefix.`, with the prefix removed."""
    return tensors_under(ckpt["state_dict"], prefix)


def tensors_under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named `prefix.*`, with the prefix removed."""
    start = prefix + "."
    return {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """`load_state_dict` with a one-line error when the shapes do not fit the configured network."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise UserError(f"checkpoint {path} does not fit the configured network ({detail[:160]}); "
                        f"use the config the checkpoint was trained with") from err
