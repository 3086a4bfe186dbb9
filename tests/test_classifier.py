"""The small CNN classifier, its checkpoints, its training CLI, and the sample report built on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data import DataConfig, make_datamodule
from model.classifier import SmallCNN, load_classifier, save_classifier, train_classifier
from model.errors import UserError
from model.evaluation import wilson_interval

DIGITS = str(Path(__file__).resolve().parent.parent / "config" / "digits.json")




@pytest.fixture(scope="module")
def trained():
    dm = make_datamodule(DataConfig(name="digits", image_size=16, batch_size=64))
    model, acc = train_classifier(dm, epochs=2, lr=3e-3, seed=0)
    return dm, model, acc


def test_shapes():
    model = SmallCNN(in_channels=3, num_classes=7, image_size=16, width=8).eval()
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    assert model.features(x).shape == (5, 16)
    assert model(x).shape == (5, 7)


def test_trains_above_chance(trained):
    # Chance is 0.1 (10 balanced classes). Two epochs at 16 px reach ~0.97-0.99 held-out accuracy; 0.8 leaves
    # room for platform noise yet fails for a broken loop (wrong labels, no learning, frozen weights).
    dm, model, acc = trained
    assert len(dm.val_set) == 180
    assert acc > 0.8


def test_training_is_deterministic():
    state = torch.get_rng_state()
    small = make_datamodule(DataConfig(name="digits", image_size=8, batch_size=64, max_items=128))
    a, acc_a = train_classifier(small, epochs=1, lr=3e-3, seed=3)
    b, acc_b = train_classifier(small, epochs=1, lr=3e-3, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert acc_a == acc_b
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_save_load_round_trip(trained, tmp_path):
    dm, model, acc = trained
    path = save_classifier(tmp_path / "c.pt", model, {"val_accuracy": acc, "class_names": dm.class_names})
    loaded, meta = load_classifier(path)
    x = next(iter(dm.val_dataloader()))[0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
        assert torch.equal(model.features(x), loaded.features(x))
    assert meta == {"val_accuracy": acc, "class_names": [str(k) for k in range(10)]}


def test_load_errors(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"ldm_kind": "vae", "ldm_config": {}, "state_dict": {}}, wrong)
    with pytest.raises(UserError, match="a vae checkpoint, but a classifier is needed"):
        load_classifier(wrong)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(UserError, match="not a checkpoint of this package"):
        load_classifier(plain)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable torch file"):
        load_classifier(junk)
    pickled = tmp_path / "pickled.pt"
    torch.save({"ldm_kind": "classifier", "model": SmallCNN(1, 10, 8, width=4)}, pickled)
    with pytest.raises(UserError, match="pickled objects"):
        load_classifier(pickled)
    with pytest.raises(UserError, match="does not exist"):
        load_classifier(tmp_path / "missing.pt")


def test_unlabelled_data_is_refused():
    dm = make_datamodule(DataConfig(name="digits", image_size=8, labels=False, max_items=64))
    with pytest.raises(UserError, match="unlabelled"):
        train_classifier(dm, epochs=1, lr=1e-3, seed=0)


def test_train_cli(tmp_path, capsys):
    from model.scripts.train_classifier import main

    small = ["-cfg", DIGITS, "--data.image_size", "16", "--data.max_items", "200", "--epochs", "1"]
    out = tmp_path / "clf.pt"
    assert main(small + ["--data.labels", "false", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unlabelled" in err and "\n" not in err
    assert not out.exists()

    assert main(small + ["--output", str(out)]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    model, meta = load_classifier(out)
    assert (model.in_channels, model.num_classes, model.image_size) == (1, 10, 16)
    assert meta["config_name"] == "digits" and meta["train_items"] == 180 and 0 <= meta["val_accuracy"] <= 1


def random_inception_weights(path: Path) -> Path:
    """A state dict of torch-fidelity's Inception-v3 at its random initialisation (the real weights cannot be
    downloaded here): the real network and loading path, meaningless features."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    cls = fidelity.FeatureExtractorInceptionV3
    with mock.patch.object(fidelity, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(cls, "load_state_dict", return_value=None):
        net = cls("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_demo_report(tmp_path, capsys):
    from model.main import main as train_main
    from model.scripts.demo_report import main as report_main

    argv = ["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", "1", "--output_dir", str(tmp_path),
            "--vae.trainer.max_steps", "3", "--denoiser.trainer.max_steps", "3",
            "--vae.trainer.val_every_n_steps", "3", "--denoiser.trainer.val_every_n_steps", "3",
            "--vae.trainer.images_every_n_steps", "0", "--denoiser.trainer.images_every_n_steps", "0",
            "--vae.trainer.progress_bar", "false", "--denoiser.trainer.progress_bar", "false",
            "--data.max_items", "200", "--data.image_size", "16"]
    assert train_main(argv) == 0
    ckpt = tmp_path / "digits-1" / "denoiser" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    clf_path = save_classifier(tmp_path / "clf.pt", SmallCNN(1, 10, 16, width=8), {})  # untrained: any accuracy
    capsys.readouterr()

    assert report_main(["--load", str(ckpt), "--classifier", str(clf_path), "--per-class", "2", "--steps", "2",
                        "--class-per-class", "3", "--cfg-scale", "0", "1", "--pixel-size", "8", "16"]) == 0
    out = tmp_path / "digits-1" / "denoiser" / "report"
    report = json.loads((out / "report.json").read_text())
    assert [s["cfg_scale"] for s in report["scales"]] == [0.0, 1.0]
    diffusion = json.loads(Path(DIGITS).read_text())["denoiser"]["diffusion"]  # the checkpoint's sampler by default
    assert (report["sampler"], report["steps"], report["spacing"]) == (diffusion["sampler"], 2,
                                                                       diffusion["sample_spacing"])
    assert report["per_class"] == 2 and report["class_per_class"] == 3
    for s in report["scales"]:  # the class accuracy and its interval from the 30 samples of the larger draw
        right = round(s["accuracy"] * 30)
        assert s["accuracy"] == pytest.approx(right / 30)
        assert s["accuracy_interval"] == pytest.approx(list(wilson_interval(right, 30)))
        assert len(s["per_class_accuracy"]) == 10 and all(0.0 <= a <= 1.0 for a in s["per_class_accuracy"])
        assert s["median_nn_distance"] > 0
    assert report["held_out_items"] == 20 and report["train_items"] == 180
    assert report["held_out_median_nn_distance"] > 0
    assert 0 <= report["held_out"]["accuracy"] <= 1 and len(report["held_out"]["per_class_accuracy"]) == 10
    assert (out / "report.md").read_text().startswith("# Sample report")
    assert list(report["budgets"]) == ["pixels 8", "pixels 16", "domain"] and "pixel_budget" not in report
    budget = report["budgets"]["pixels 8"]
    assert [r["row"] for r in budget["rows"]] == ["samples w=0", "samples w=1", "VAE round trip", "real floor"]
    assert budget["protocol"]["n"] == 20 and budget["protocol"]["real_pool"] == 200
    assert report["budgets"]["domain"]["protocol"]["features"].startswith("the classifier's penultimate layer (16")
    assert [line for line in (out / "report.md").read_text().splitlines() if line.startswith("### ")] == [
        "### pixels 8", "### pixels 16", "### domain"]
    from PIL import Image

    assert Image.open(out / "real_vs_samples_w0.png").size == (21 * 18 + 2, 10 * 18 + 2)  # 10 real | 10 samples
    assert "held-out real images" in capsys.readouterr().out

    # more draws of the samples: rows of their own, after the --seed draw, which reads as it does alone
    first = ["--load", str(ckpt), "--classifier", str(clf_path), "--per-class", "2", "--steps", "2",
             "--class-per-class", "3", "--cfg-scale", "0", "1", "--pixel-size", "8"]
    assert report_main(first + ["--sample-draws", "3", "--output", str(tmp_path / "draws")]) == 0
    drawn = json.loads((tmp_path / "draws" / "report.json").read_text())
    rows = {r["row"]: r for r in drawn["budgets"]["pixels 8"]["rows"]}
    assert list(rows) == ["samples w=0", "samples w=1", "samples w=0, seed 1", "samples w=0, seed 2",
                          "samples w=1, seed 1", "samples w=1, seed 2", "VAE round trip", "real floor"]
    assert rows["samples w=0"] == budget["rows"][0]
    assert rows["samples w=0, seed 1"]["pixel_fd"] != rows["samples w=0"]["pixel_fd"]
    assert drawn["sample_draws"] == 3 and drawn["scales"] == report["scales"]
    assert '"samples w=…, seed S" are 2 more draws' in (tmp_path / "draws" / "report.md").read_text()
    assert report_main(first + ["--sample-draws", "0"]) == 2
    assert "--sample-draws must be > 0" in capsys.readouterr().err

    # Inception-v3 itself (torch-fidelity's network through torchmetrics, random weights from disk) on a few images:
    # at 299x299 on a CPU every image counts
    weights = random_inception_weights(tmp_path / "inception.pth")
    assert report_main(["--load", str(ckpt), "--classifier", str(clf_path), "--per-class", "1", "--steps", "2",
                        "--class-per-class", "1", "--sampler", "euler", "--spacing", "karras", "--autoguidance", "0.3",
                        "--cfg-scale", "0", "--pixel-size", "8", "--real-pool", "40", "--draws", "2",
                        "--inception-weights", str(weights), "--output", str(tmp_path / "inception")]) == 0
    report = json.loads((tmp_path / "inception" / "report.json").read_text())
    inception = report["budgets"]["inception"]
    assert report["sampling"] == "Euler 2 steps, karras (autoguidance 0.3)" and report["autoguidance"] == 0.3
    assert "Euler 2 steps, karras (autoguidance 0.3), 1 samples per class" in \
        (tmp_path / "inception" / "report.md").read_text()
    assert list(report["budgets"]) == ["pixels 8", "domain", "inception"]
    assert str(weights) in inception["protocol"]["features"] and inception["protocol"]["real_pool"] == 40
    assert [r["row"] for r in inception["rows"]] == ["samples w=0", "VAE round trip", "real floor"]
    assert all(r["pixel_fd"]["mean"] > 0 for r in inception["rows"])  # 2048-d features of different images
    capsys.readouterr()

    # a classifier for another image size is refused with one line
    other = save_classifier(tmp_path / "clf32.pt", SmallCNN(1, 10, 32, width=8), {})
    assert report_main(["--load", str(ckpt), "--classifier", str(other), "--per-class", "1", "--steps", "1"]) == 2
    assert "does not fit the denoiser's data" in capsys.readouterr().err


def test_side_by_side_puts_real_left_and_samples_right_class_by_class():
    from model.scripts.demo_report import side_by_side

    real = torch.stack([torch.full((1, 2, 2), v) for v in (0.1, 0.2, 0.3)])  # classes 0, 1, 0
    samples = torch.stack([torch.full((1, 2, 2), v) for v in (-0.1, -0.2, -0.3, -0.4)])  # classes 0, 0, 1, 1
    tiles = side_by_side(real, torch.tensor([0, 1, 0]), samples, torch.tensor([0, 0, 1, 1]), per_class=2)
    assert tiles.shape == (10, 1, 2, 2)  # 2 rows of 2 real + spacer + 2 samples
    values = tiles[:, 0, 0, 0].tolist()
    assert values == pytest.approx([0.1, 0.3, 0.0, -0.1, -0.2, 0.2, 0.0, 0.0, -0.3, -0.4])  # class 1 has 1 real
