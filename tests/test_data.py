"""Data modules on small data written into tmp_path: shapes, ranges, labels, splits, errors."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from data import DATAMODULES, DataConfig, chamfer_distance, make_datamodule
from data.base import split_indices
from data.config import DATA_NAMES, TOY_SHAPES
from data.transforms import ImageTransform, to_mode, to_square
from model.errors import UserError


def first_batch(dm, train: bool = True):
    loader = dm.train_dataloader() if train else dm.val_dataloader()
    return next(iter(loader))


def check_batch(x: torch.Tensor, y: torch.Tensor, channels: int, size: int) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == (channels, size, size) and y.shape == (x.shape[0],)
    assert x.min() >= -1.0 and x.max() <= 1.0


# ---- config -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(image_size=-3), "data.image_size"),
        (dict(channels=2), "data.channels"),
        (dict(batch_size=0), "data.batch_size"),
        (dict(val_fraction=1.0), "data.val_fraction"),
        (dict(name="imagenet"), "data.name"),
        (dict(name="folder"), "data.root"),
        (dict(crop="stretch"), "data.crop"),
        (dict(toy_shape="spiral42"), "data.toy_shape"),
        (dict(max_items=0), "data.max_items"),
    ],
)
def test_config_rejects_bad_values(kwargs, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as info:
        DataConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_registry_has_every_name():
    assert set(DATAMODULES) == set(DATA_NAMES)


# ---- transforms -------------------------------------------------------------------------------------------


def test_sixteen_bit_white_is_white_and_mid_grey_is_mid():
    for value, expect in ((65535, 255), (32896, 128), (0, 0)):
        img = Image.fromarray(np.full((4, 4), value, dtype=np.uint16))
        assert img.mode.startswith("I;16")
        assert np.asarray(to_mode(img, 1)).tolist() == [[expect] * 4] * 4
    wide = Image.fromarray(np.full((4, 4), 65535, dtype=np.int32), mode="I")
    assert np.asarray(to_mode(wide, 3)).min() == 255


def test_alpha_and_palette_composite_on_white():
    clear = Image.new("RGBA", (3, 3), (255, 0, 0, 0))
    assert to_mode(clear, 3).getpixel((1, 1)) == (255, 255, 255)
    assert to_mode(Image.new("LA", (3, 3), (0, 0)), 1).getpixel((0, 0)) == 255
    pal = Image.new("P", (3, 3), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert to_mode(pal, 3).getpixel((0, 0)) == (0, 0, 255)
    pal.info["transparency"] = 1
    assert to_mode(pal, 3).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (3, 3), (0, 0, 0, 0))  # no ink = white
    assert to_mode(cmyk, 1).getpixel((0, 0)) == 255


def test_to_square_center_and_pad():
    img = Image.new("L", (8, 4), 255)
    assert to_square(img, "center").size == (4, 4)
    padded = np.asarray(to_square(img, "pad"))
    assert padded.shape == (8, 8) and padded[0].max() == 0 and padded[4].min() == 255


def test_image_transform_range_and_flip():
    arr = np.zeros((4, 4), dtype=np.uint8)
    arr[:, 0] = 255  # white left column
    img = Image.fromarray(arr)
    x = ImageTransform(4, 1)(img)
    assert x.shape == (1, 4, 4) and x[0, 0, 0] == 1.0 and x[0, 0, 3] == -1.0
    torch.manual_seed(0)
    flips = {float(ImageTransform(4, 1, hflip=True)(img)[0, 0, 3]) for _ in range(30)}
    assert flips == {-1.0, 1.0}


# ---- folder -----------------------------------------------------------------------------------------------


def write_class_folder(root) -> dict[str, str]:
    """cat/ and dog/ with odd modes, nested folders and one corrupt file; returns {name: class}."""
    (root / "cat" / "nested" / "deeper").mkdir(parents=True)
    (root / "dog").mkdir()
    files = {
        "cat/grey.png": Image.new("L", (20, 12), 128),
        "cat/rgba.png": Image.new("RGBA", (10, 10), (255, 0, 0, 128)),
        "cat/nested/palette.bmp": Image.new("P", (9, 9), 3),
        "cat/nested/deeper/cmyk.jpg": Image.new("CMYK", (16, 16), (0, 255, 0, 0)),
        "dog/wide.png": Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)),
        "dog/la.png": Image.new("LA", (7, 5), (50, 255)),
        "dog/rgb.webp": Image.new("RGB", (32, 48), (0, 0, 255)),
    }
    for name, img in files.items():
        img.save(root / name)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "dog" / "notes.txt").write_text("ignored")
    return {name: name.split("/")[0] for name in files}


def folder_dm(root, **kw):
    return make_datamodule(DataConfig(**{"name": "folder", "root": str(root), "val_fraction": 0.0, **kw}))


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_labels_modes_and_corrupt_skip(tmp_path, channels):
    classes = write_class_folder(tmp_path)
    dm = folder_dm(tmp_path, channels=channels, image_size=16)
    with pytest.warns(UserWarning, match=r"skipped 1 corrupt images \(first: .*broken\.png\)"):
        dm.setup("fit")
    assert dm.skipped == [str(tmp_path / "dog" / "broken.png")]
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    check_batch(*first_batch(dm), channels, 16)
    items = {os.path.relpath(dm._paths[j], tmp_path): dm.train_set[i] for i, j in enumerate(dm.train_set.indices)}
    assert len(items) == 7 and len(dm.val_set) == 0
    assert {name: y for name, (_, y) in items.items()} == {name: int(c == "dog") for name, c in classes.items()}
    assert torch.all(items["dog/wide.png"][0] == 1.0)  # white 16-bit -> +1, not wrapped or clipped garbage
    assert torch.allclose(items["cat/grey.png"][0], torch.tensor(128 / 127.5 - 1), atol=1e-6)


def test_folder_corrupt_error_names_file(tmp_path):
    write_class_folder(tmp_path)
    with pytest.raises(UserError, match="broken.png"):
        folder_dm(tmp_path, on_corrupt="error").setup("fit")


def test_folder_flat_needs_labels_false(tmp_path):
    for k in range(5):
        Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(tmp_path / f"{k}.png")
    with pytest.raises(UserError, match="data.labels false"):
        folder_dm(tmp_path).setup("fit")
    dm = folder_dm(tmp_path, labels=False, batch_size=2)  # batch smaller than the set; last batch kept
    assert dm.num_classes == 0 and dm.class_names == []
    sizes = [len(y) for _, y in dm.train_dataloader()]
    assert sizes == [2, 2, 1]
    assert torch.all(next(iter(dm.train_dataloader()))[1] == -1)


def test_folder_missing_and_empty(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        folder_dm(tmp_path / "nowhere").setup("fit")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="empty.*no images"):
        folder_dm(tmp_path / "empty").setup("fit")


# ---- digits and the split ---------------------------------------------------------------------------------


def test_digits_batches_and_labels():
    dm = make_datamodule(DataConfig(name="digits", channels=3, image_size=16, batch_size=32))
    assert dm.num_classes == 10 and dm.class_names[0] == "0"
    x, y = first_batch(dm)
    check_batch(x, y, 3, 16)
    assert y.min() >= 0 and y.max() <= 9
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated to RGB
    assert len(dm.train_set) + len(dm.val_set) == 1797 and len(dm.val_set) == 180


def test_digits_split_is_seeded():
    def val_indices(seed):
        dm = make_datamodule(DataConfig(name="digits", seed=seed))
        dm.setup("fit")
        return list(dm.val_set.indices)

    assert val_indices(0) == val_indices(0)
    assert val_indices(0) != val_indices(1)


def test_digits_unlabelled_and_max_items():
    dm = make_datamodule(DataConfig(name="digits", labels=False, max_items=50, val_fraction=0.2))
    dm.setup("fit")
    assert dm.num_classes == 0 and len(dm.train_set) == 40 and len(dm.val_set) == 10
    assert torch.all(first_batch(dm)[1] == -1)


def test_digits_are_read_once_and_each_data_module_owns_its_copy():
    from sklearn.datasets import load_digits

    from data.digits import bundled_digits

    first = make_datamodule(DataConfig(name="digits"))
    first.setup("fit")
    reads = bundled_digits.cache_info().misses  # 1: this process has read the file once, here or before
    first._images.fill_(0.5)  # what one module does to its tensors must not reach the next (they share one read)
    first._labels.fill_(3)
    second = make_datamodule(DataConfig(name="digits"))
    second.setup("fit")
    bunch = load_digits()
    assert torch.equal(second._images[:, 0], torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0)
    assert torch.equal(second._labels, torch.as_tensor(bunch.target))
    assert reads == 1 and bundled_digits.cache_info().misses == 1


def test_split_indices_partition():
    train, val = split_indices(10, 0.01, seed=3)
    assert len(val) == 1 and sorted(train + val) == list(range(10))
    assert split_indices(10, 0.0, seed=3)[1] == []


# ---- Hugging Face -----------------------------------------------------------------------------------------


def save_hf(tmp_path):
    import datasets

    images = [Image.new("RGB", (30 + 5 * k, 20), (20 * k, 0, 0)) for k in range(6)]
    ds = datasets.Dataset.from_dict({"img": images, "kind": ["b", "a", "b", "a", "c", "a"]})
    ds = ds.cast_column("img", datasets.Image())
    path = tmp_path / "hfset"
    ds.save_to_disk(str(path))
    return path


def test_hf_local_dataset(tmp_path):
    path = save_hf(tmp_path)
    cfg = DataConfig(
        name="hf", root=str(path), hf_image_column="img", hf_label_column="kind", channels=3, image_size=8,
        val_fraction=0.0,
    )
    dm = make_datamodule(cfg)
    assert dm.class_names == ["a", "b", "c"]
    x, y = first_batch(dm)
    check_batch(x, y, 3, 8)
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 2]


def test_hf_missing_column_lists_columns(tmp_path):
    path = save_hf(tmp_path)
    with pytest.raises(UserError, match=r"data\.hf_image_column.*columns: img, kind"):
        make_datamodule(DataConfig(name="hf", root=str(path))).setup("fit")


# ---- torchvision ------------------------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise OSError("network is unreachable")


def test_mnist_offline_without_files_names_the_file(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "download", _refuse)
    dm = make_datamodule(DataConfig(name="mnist", root=str(tmp_path)))
    with pytest.raises(UserError, match=r"MNIST.raw.train-images-idx3-ubyte\.gz"):
        dm.prepare_data()


def test_cifar_offline_without_files_names_the_folder(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "download", _refuse)
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        make_datamodule(DataConfig(name="cifar10", root=str(tmp_path))).prepare_data()


def write_fake_mnist(root, n: int = 12) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(n * 28 * 28, dtype=np.uint64).reshape(n, 28, 28) % 256
    for prefix in ("train", "t10k"):
        # idx format: big-endian magic (0x08 = ubyte, then the number of dims) and sizes, then the bytes
        header = struct.pack(">iiii", 0x803, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.astype(np.uint8).tobytes())
        labels = bytes(k % 10 for k in range(n))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + labels)


def test_mnist_reads_local_files(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    write_fake_mnist(tmp_path)
    monkeypatch.setattr(MNIST, "mirrors", [])  # no network even if the check failed
    dm = make_datamodule(DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.25))
    dm.prepare_data()
    x, y = first_batch(dm)
    check_batch(x, y, 1, 32)
    assert len(dm.train_set) == 9 and len(dm.val_set) == 3 and set(y.tolist()) <= set(range(10))


# ---- toy 2-D ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", TOY_SHAPES)
def test_toy2d_batches(shape):
    dm = make_datamodule(DataConfig(name="toy2d", toy_shape=shape, toy_num_points=2000, batch_size=100))
    x, y = first_batch(dm)
    assert x.shape == (100, 2) and x.dtype == torch.float32 and torch.all(y == -1)
    pts = dm.points()
    assert pts.shape == (2000, 2) and abs(float(pts.std()) - 1.0) < 0.05 and float(pts.mean(0).abs().max()) < 1e-4
    assert dm.num_classes == 0 and dm.data_shape == (2,)


def test_chamfer_distance_properties():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 2, generator=g), torch.randn(200, 2, generator=g)
    assert chamfer_distance(a, a) == 0.0
    assert chamfer_distance(a, b) == pytest.approx(chamfer_distance(b, a))
    shifts = [chamfer_distance(a, a + torch.tensor([d, 0.0])) for d in (0.01, 0.5, 2.0)]
    assert 0.0099 < shifts[0] <= 0.01 + 1e-6 and shifts[0] < shifts[1] < shifts[2]  # ~ |d| for a small shift d
    assert chamfer_distance(a, b, chunk=7) == pytest.approx(chamfer_distance(a, b))
