"""LPIPS (Zhang et al. 2018, The Unreasonable Effectiveness of Deep Features as a Perceptual Metric), offline.

The `lpips` package ships its linear calibration layers inside the package, but its backbone (torchvision
AlexNet / VGG16 / SqueezeNet1.1 ImageNet weights) would be downloaded by torchvision on first use. This module
never downloads: it builds LPIPS with a random backbone (`pnet_rand=True`, which makes torchvision skip the
download) and then loads the weights from a local file, either

1. `vae.loss.lpips_weights`: a file holding
   - a full LPIPS state_dict (backbone keys `net.slice*.*`, linear layers `lin*.model.1.weight`, buffers
     `scaling_layer.*`), made on a machine with internet by
         python -c "import lpips, torch; torch.save(lpips.LPIPS(net='alex').state_dict(), 'lpips_alex.pth')"
     (net='vgg' / 'squeeze' likewise), or
   - torchvision's backbone state_dict (keys `features.*`), i.e. the file torchvision itself downloads; the
     linear layers then come from the lpips package; or
2. nothing: torchvision's cached backbone file in `torch.hub.get_dir()/checkpoints/` (the name in
   `BACKBONE_FILES`), present if torchvision downloaded it on this machine before or it was copied there.

Anything missing raises a one-line `UserError` saying which file to put where.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from model.errors import UserError

# file names torchvision gives the ImageNet backbones LPIPS uses (torchvision.models.*_Weights.IMAGENET1K_V1)
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
BACKBONE_URL = "https://download.pytorch.org/models/"


def _how_to_make(net: str) -> str:
    return (
        f"torch.save(lpips.LPIPS(net='{net}').state_dict(), 'lpips_{net}.pth') on a machine with internet and set "
        f"vae.loss.lpips_weights to that file"
    )


def backbone_cache_path(net: str) -> Path:
    """Where torchvision caches the backbone of LPIPS(net): torch.hub.get_dir()/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or not a torch file
        raise UserError(f"cannot read LPIPS weights {path} ({type(err).__name__}); replace the file") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"LPIPS weights {path} hold a {type(state).__name__}, not a state_dict; save a state_dict")
    return state


def _backbone_from_torchvision(backbone: nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict:
    """Rename torchvision keys `features.<i>.<p>` to the lpips backbone's `slice<k>.<i>.<p>`."""
    renamed = {}
    for key in backbone.state_dict():
        _, rest = key.split(".", 1)  # "slice2.3.weight" -> "3.weight"
        source = f"features.{rest}"
        if source not in state:
            raise UserError(f"LPIPS backbone weights {path} lack the key {source!r}; is it the right network?")
        renamed[key] = state[source]
    return renamed


def _load(module: nn.Module, state: dict, path: Path, net: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"LPIPS weights {path} do not fit vae.loss.lpips_net='{net}' (missing, extra or mis-shaped keys); "
            f"use the file of that network, e.g. {_how_to_make(net)}"
        ) from err


def build_lpips(net: str = "alex", weights: str | None = None) -> nn.Module:
    """A frozen, eval-mode `lpips.LPIPS(net=net)` loaded from local files only (see the module docstring).

    Its forward takes two (B, 3, H, W) tensors in [-1, 1] and returns (B, 1, 1, 1) distances.
    """
    if net not in BACKBONE_FILES:
        raise UserError(f"vae.loss.lpips_net must be one of {list(BACKBONE_FILES)}, got {net!r}")
    try:
        import lpips
    except ImportError as err:
        raise UserError(
            "vae.loss.lpips > 0 needs the lpips package; pip install lpips, or set vae.loss.lpips 0"
        ) from err

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"vae.loss.lpips_weights: no file {path}; make it with {_how_to_make(net)}")
    else:
        path = backbone_cache_path(net)
        if not path.is_file():
            raise UserError(
                f"LPIPS '{net}' needs the backbone weights {path.name} in {path.parent} (this machine does not "
                f"download): copy {BACKBONE_URL}{path.name} there, or {_how_to_make(net)}, or set vae.loss.lpips 0"
            )
    state = _read(path)

    with warnings.catch_warnings():  # torchvision's deprecation warnings about lpips' `pretrained=` argument
        warnings.simplefilter("ignore")
        # pretrained=True: linear layers from the lpips package's own files; pnet_rand=True: no backbone download
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if any(k.startswith("net.") for k in state):  # full LPIPS state_dict
        _load(model, state, path, net)
    elif any(k.startswith("features.") for k in state):  # torchvision backbone state_dict
        _load(model.net, _backbone_from_torchvision(model.net, state, path), path, net)
    else:
        raise UserError(
            f"LPIPS weights {path} are neither an LPIPS state_dict (keys 'net.*') nor a torchvision backbone "
            f"(keys 'features.*'); make one with {_how_to_make(net)}"
        )
    return model.eval().requires_grad_(False)
