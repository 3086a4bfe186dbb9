"""The emoji data source (data/emoji.py) on a small package the tests make: the layout, the captions, the licences,
the compositing on white, the npm path (a stand-in `npm` on PATH) and the refusals. The download itself is not
used: the tests must run offline."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data.emoji import SETS, VERSION, fetch
from model.errors import UserError

ENTRIES = [  # name, image, category, subcategory, has_img_twitter, has_img_google
    ("ROSE", "1f339.png", "Animals & Nature", "plant-flower", True, True),
    ("Japan Flag", "1f1ef-1f1f5.png", "Flags", "country-flag", True, True),
    ("GRINNING FACE", "1f600.png", "Smileys & Emotion", "face-smiling", True, False),
    ("EMOJI MODIFIER FITZPATRICK TYPE-3", "1f3fc.png", "Component", "skin-tone", True, True),
    ("LISTED BUT MISSING", "1f9ff.png", "Objects", "other-object", True, True),
]
COLOURS = {"1f339.png": (200, 0, 0), "1f1ef-1f1f5.png": (0, 0, 200), "1f600.png": (250, 200, 0),
           "1f3fc.png": (150, 100, 50)}


def make_package(root: Path, set_name: str) -> Path:
    """package/emoji.json and package/img/<set>/64/*.png: a coloured disc on a transparent square."""
    package = root / "package"
    images = package / "img" / set_name / "64"
    images.mkdir(parents=True)
    table = []
    for name, image, category, sub, tw, go in ENTRIES:
        table.append({"name": name, "image": image, "short_names": [name.lower().replace(" ", "_")],
                      "category": category, "subcategory": sub, "has_img_twitter": tw, "has_img_google": go,
                      "skin_variations": {"1F3FB": {"image": image.replace(".png", "-1f3fb.png")}}})
        if image in COLOURS:
            disc = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black around it
            for x in range(16, 48):
                for y in range(16, 48):
                    disc.putpixel((x, y), (*COLOURS[image], 255))
            disc.save(images / image)
    (package / "emoji.json").write_text(json.dumps(table))
    return package


def test_the_layout_is_a_captioned_folder_with_one_sub_folder_per_category(tmp_path):
    written = fetch(["twitter", "google"], tmp_path / "emoji",
                    {"twitter": make_package(tmp_path / "tw", "twitter"),
                     "google": make_package(tmp_path / "go", "google")})
    assert written == {"twitter": 3, "google": 2}  # no Component, no missing file; google has no grinning face
    out = tmp_path / "emoji"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["animals-nature", "flags", "smileys-emotion"]
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert {r["file_name"]: r["text"] for r in rows} == {
        "animals-nature/twitter-1f339.png": "rose", "flags/twitter-1f1ef-1f1f5.png": "japan flag",
        "smileys-emotion/twitter-1f600.png": "grinning face", "animals-nature/google-1f339.png": "rose",
        "flags/google-1f1ef-1f1f5.png": "japan flag"}
    assert all((out / r["file_name"]).is_file() and r["subcategory"] and r["category"] for r in rows)
    licences = (out / "LICENSES.md").read_text()
    assert "CC-BY 4.0" in licences and "Apache" in licences


def test_images_are_composited_on_white(tmp_path):
    fetch(["twitter"], tmp_path / "emoji", {"twitter": make_package(tmp_path / "tw", "twitter")})
    with Image.open(tmp_path / "emoji" / "animals-nature" / "twitter-1f339.png") as image:
        assert image.mode == "RGB" and image.size == (64, 64)
        assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent black became white
        assert image.getpixel((32, 32)) == COLOURS["1f339.png"]


def test_the_folder_source_reads_the_categories_as_classes(tmp_path):
    from data import make_datamodule
    from data.config import DataConfig

    fetch(["twitter"], tmp_path / "emoji", {"twitter": make_package(tmp_path / "tw", "twitter")})
    dm = make_datamodule(DataConfig(name="folder", root=str(tmp_path / "emoji"), image_size=16, channels=3,
                                    val_fraction=0.0, batch_size=1))
    dm.setup()
    assert dm.num_classes == 3
    x, y = dm.all_items()[0]
    assert x.shape == (3, 16, 16)


def fake_npm(bin_dir: Path, tarball_source: Path) -> None:
    """An `npm` that answers `npm pack <pkg>@<version> --pack-destination DIR` with a tarball of `tarball_source`."""
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text(f"""#!{sys.executable}
import sys, tarfile
spec, dest = sys.argv[2], sys.argv[4]
package, version = spec.rsplit("@", 1)
with tarfile.open(f"{{dest}}/{{package}}-{{version}}.tgz", "w:gz") as tar:
    tar.add({str(tarball_source)!r}, arcname="package")
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_npm_pack_fetches_the_package(tmp_path, monkeypatch):
    fake_npm(tmp_path / "bin", make_package(tmp_path / "tw", "twitter"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert fetch(["twitter"], tmp_path / "emoji") == {"twitter": 3}


def test_without_npm_the_error_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match=f"{SETS['twitter'].package}-{VERSION}.tgz"):
        fetch(["twitter"], tmp_path / "emoji")


def test_refusals_come_before_anything_is_written(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not an empty folder"):
        fetch(["twitter"], tmp_path / "full", {"twitter": make_package(tmp_path / "tw", "twitter")})
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.png"]
    with pytest.raises(UserError, match="unknown emoji set"):
        fetch(["apple"], tmp_path / "new")
    with pytest.raises(UserError, match="no emoji.json"):
        fetch(["twitter"], tmp_path / "new", {"twitter": tmp_path})
    assert not (tmp_path / "new").exists()


def test_the_command_line_is_one_line_on_bad_input(tmp_path):
    done = subprocess.run([sys.executable, "-m", "model.scripts.fetch_emoji", "--output", str(tmp_path / "e"),
                           "--from", "twitter"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "SET=DIR" in done.stderr


def test_a_tarball_unpacks_to_its_package(tmp_path):
    from data.emoji import unpack

    source = make_package(tmp_path / "tw", "twitter")
    with tarfile.open(tmp_path / "p.tgz", "w:gz") as tar:
        tar.add(source, arcname="package")
    assert (unpack(tmp_path / "p.tgz", tmp_path / "out") / "emoji.json").is_file()
