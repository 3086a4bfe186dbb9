"""The emoji image packages of the npm registry, laid out as a captioned image folder.

`emoji-datasource-twitter` and `emoji-datasource-google` (version 16.0.0) each hold a 64-px RGBA PNG of about 1,900
emoji under `img/<set>/64/` and `emoji.json`, which names every image ("rose", "Japan flag") and gives its short
names, category and subcategory. `layout` writes them as a folder the `folder` data source reads:

    <output>/<category>/<set>-<image>.png    RGB, composited on white (the PNGs are transparent around the glyph)
    <output>/metadata.jsonl                  one line per image: file_name, text (the caption), name, short_names,
                                             category, subcategory, set (the Hugging Face imagefolder convention)
    <output>/LICENSES.md                     the images' licences: Twitter's CC-BY 4.0, Google's Apache-2.0

One sub-folder per category, so the folder's class labels are the emoji categories. Skin-tone variants are left
out (only each emoji's base image is kept), and so is the "Component" category (the bare skin-tone swatches and
hair parts, not pictures of anything).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from model.errors import UserError

VERSION = "16.0.0"
SIZE = 64
SKIPPED_CATEGORIES = ("Component",)


@dataclass(frozen=True)
class EmojiSet:
    name: str  # "twitter": the `img/<name>/` folder and the `has_img_<name>` key of emoji.json
    package: str
    licence: str


SETS = {
    "twitter": EmojiSet("twitter", "emoji-datasource-twitter",
                        "Twemoji graphics by Twitter, Inc. and other contributors, licensed under CC-BY 4.0 "
                        "(https://creativecommons.org/licenses/by/4.0/)."),
    "google": EmojiSet("google", "emoji-datasource-google",
                       "Noto Emoji graphics by Google, licensed under the Apache License 2.0 "
                       "(https://www.apache.org/licenses/LICENSE-2.0)."),
}


def folder_name(category: str) -> str:
    """"Smileys & Emotion" -> "smileys-emotion": a category as a sub-folder name."""
    return re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")


def caption(entry: dict) -> str:
    """The emoji's name in lower case ("rose", "japan flag"); the short name where the name is missing."""
    return (entry.get("name") or entry["short_names"][0].replace("_", " ")).lower()


def npm_pack(emoji_set: EmojiSet, folder: Path) -> Path:
    """`npm pack <package>@VERSION` into `folder`: the package's tarball (from the npm registry)."""
    if shutil.which("npm") is None:
        raise UserError(f"npm is not installed; install it (apt-get install npm) or download "
                        f"{emoji_set.package}-{VERSION}.tgz from the npm registry, unpack it and pass its folder "
                        f"with --from")
    spec = f"{emoji_set.package}@{VERSION}"
    done = subprocess.run(["npm", "pack", spec, "--pack-destination", str(folder)], capture_output=True, text=True)
    tarball = folder / f"{emoji_set.package}-{VERSION}.tgz"
    if done.returncode != 0 or not tarball.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"npm pack {spec} failed ({last}); check the network, or unpack the package by hand and "
                        f"pass its folder with --from")
    return tarball


def unpack(tarball: Path, folder: Path) -> Path:
    """The package folder of an npm tarball (npm puts everything under `package/`)."""
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse paths outside `folder`
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder)
    return folder / "package"


def package_folder(emoji_set: EmojiSet, given: Path | None, work: Path) -> Path:
    """The unpacked package: `given` (a folder with emoji.json, or its parent holding `package/`), else fetched."""
    if given is None:
        return unpack(npm_pack(emoji_set, work), work)
    for candidate in (given, given / "package"):
        if (candidate / "emoji.json").is_file():
            return candidate
    raise UserError(f"{given} holds no emoji.json; pass the unpacked {emoji_set.package} folder (its package/)")


def entries(package: Path, emoji_set: EmojiSet) -> list[dict]:
    """The base emoji that have an image of this set, outside the skipped categories."""
    try:
        table = json.loads((package / "emoji.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {package / 'emoji.json'} ({err}); unpack the package again") from None
    return [e for e in table if e.get(f"has_img_{emoji_set.name}") and e["category"] not in SKIPPED_CATEGORIES]


def on_white(path: Path):
    """The RGBA image at `path` composited on white, as RGB."""
    from PIL import Image

    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def layout(packages: dict[str, Path], output: Path) -> dict[str, int]:
    """Write the images of every set in `packages` ({set name: unpacked package}) to `output` as a captioned
    folder; returns the number of images written per set. Images listed but missing from a package are skipped."""
    output.mkdir(parents=True, exist_ok=True)
    rows, written = [], {}
    for name, package in packages.items():
        emoji_set = SETS[name]
        written[name] = 0
        for entry in entries(package, emoji_set):
            source = package / "img" / name / str(SIZE) / entry["image"]
            if not source.is_file():
                continue
            file_name = f"{folder_name(entry['category'])}/{name}-{entry['image']}"
            (output / file_name).parent.mkdir(exist_ok=True)
            on_white(source).save(output / file_name)
            rows.append({"file_name": file_name, "text": caption(entry), "name": entry.get("name"),
                         "short_names": entry["short_names"], "category": entry["category"],
                         "subcategory": entry["subcategory"], "set": name})
            written[name] += 1
    (output / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (output / "LICENSES.md").write_text(licences(packages))
    return written


def licences(sets: Iterable[str]) -> str:
    lines = [f"# Licences of these images\n\nThe emoji images come from the npm packages of emoji-datasource "
             f"{VERSION} (https://github.com/iamcal/emoji-data), composited on white and sorted by category.\n"]
    lines += [f"- `{SETS[name].name}-*.png` ({SETS[name].package}): {SETS[name].licence}" for name in sets]
    return "\n".join(lines) + "\n"


def fetch(sets: list[str], output: Path, given: dict[str, Path] | None = None) -> dict[str, int]:
    """Fetch (or take from `given`) each set's package and lay all of them out in `output`, which must be empty or
    new (a folder of earlier images is never mixed with or overwritten by these)."""
    unknown = [s for s in list(sets) + list(given or {}) if s not in SETS]
    if unknown:
        raise UserError(f"unknown emoji set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"{output} already exists and is not an empty folder; choose a new --output or remove it")
    given = given or {}
    with tempfile.TemporaryDirectory() as work:
        packages = {}
        for name in sets:
            folder = Path(work) / name
            folder.mkdir()
            packages[name] = package_folder(SETS[name], given.get(name), folder)
        return layout(packages, output)
