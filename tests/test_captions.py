"""Captions per image (data/captions.py): metadata.jsonl and <image>.txt in a folder, a Hugging Face caption column,
the missing-caption policy, and the captions kept in the data module's split order."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from data import make_datamodule
from data.config import DataConfig
from model.errors import UserError


def folder(tmp_path, metadata: dict[str, str], sidecars: dict[str, str], images=("a/1.png", "a/2.png", "b/3.png")):
    root = tmp_path / "images"
    for name in images:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10 * len(name), 0, 0)).save(root / name)
    for name, text in sidecars.items():
        (root / name).with_suffix(".txt").write_text(text + "\n")
    if metadata:
        (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": k, "text": v}) + "\n"
                                                     for k, v in metadata.items()))
    return root


def module(root, **kw):
    cfg = dict(name="folder", root=str(root), image_size=8, channels=3, batch_size=1, captions=True, val_fraction=0.0)
    dm = make_datamodule(DataConfig(**{**cfg, **kw}))
    dm.setup()
    return dm


def captions_by_file(dm) -> dict[str, str]:
    """{file name: caption} in all_items order (the folder keeps its images in `_paths`)."""
    order = list(dm.train_set.indices) + list(dm.val_set.indices)
    return {dm._paths[i].split("images/")[1]: text for i, text in zip(order, dm.captions())}


def test_metadata_jsonl_wins_over_sidecars_and_sidecars_fill_the_rest(tmp_path):
    root = folder(tmp_path, {"a/1.png": "a red square", "b/3.png": "three"}, {"a/1.png": "ignored", "a/2.png": "two"})
    assert captions_by_file(module(root)) == {"a/1.png": "a red square", "a/2.png": "two", "b/3.png": "three"}


def test_a_missing_caption_is_the_empty_prompt_or_an_error_naming_the_image(tmp_path):
    root = folder(tmp_path, {"a/1.png": "one"}, {"b/3.png": "   "})
    assert captions_by_file(module(root)) == {"a/1.png": "one", "a/2.png": "", "b/3.png": ""}
    with pytest.raises(UserError, match=r"2 images .* no caption \(first: .*2.png\)"):
        module(root, on_missing_caption="error")


def test_captions_follow_the_split(tmp_path):
    root = folder(tmp_path, {f"a/{i}.png": f"image {i}" for i in range(10)}, {},
                  images=[f"a/{i}.png" for i in range(10)])
    dm = module(root, val_fraction=0.3)
    train, val = dm.captions("train"), dm.captions("val")
    assert len(train) == 7 and len(val) == 3 and sorted(train + val) == sorted(f"image {i}" for i in range(10))
    assert [dm._paths[i].endswith(text.split()[1] + ".png") for i, text in zip(dm.val_set.indices, val)] == [True] * 3


def test_a_broken_metadata_line_and_sources_without_captions_are_one_line_errors(tmp_path):
    root = folder(tmp_path, {"a/1.png": "one"}, {})
    with open(root / "metadata.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(UserError, match="line 2 of .*metadata.jsonl"):
        module(root)
    with pytest.raises(UserError, match="has no captions"):
        DataConfig(name="digits", captions=True)
    with pytest.raises(UserError, match="hf_caption_column"):
        DataConfig(name="hf", root="x", captions=True)
    with pytest.raises(UserError, match="set data.captions true"):
        module(root, captions=False).captions()


def test_a_hugging_face_caption_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(4)]
    ds = datasets.Dataset.from_dict({"image": images, "caption": ["red", None, "dark", "darker"]})
    ds.save_to_disk(str(tmp_path / "hf"))
    dm = module(tmp_path / "hf", name="hf", hf_caption_column="caption")
    assert sorted(dm.captions()) == ["", "dark", "darker", "red"]
    with pytest.raises(UserError, match="row 1"):
        module(tmp_path / "hf", name="hf", hf_caption_column="caption", on_missing_caption="error")
    with pytest.raises(UserError, match="data.hf_caption_column='text' is not a column"):
        module(tmp_path / "hf", name="hf", hf_caption_column="text")
