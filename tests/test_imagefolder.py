"""--data DIR of class folders (issue 24): real CIFAR-10 images written as PNG files, decoded,
resized and center-cropped at --input-size, through compress; bad folders are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from pipeline.data import load_dataset

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar(per_class: int):
    if not CIFAR.is_dir():
        pytest.fail(f"{CIFAR}: the real CIFAR-10 arrays this test reads are missing")
    with np.load(CIFAR / "test.npz") as d:
        x, y = d["x"], d["y"]
    pick = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    return x[pick], y[pick]


def write_folder(root: Path, per_class: int = 20, gray: int = 0, small: int = 0) -> Path:
    """CIFAR-10 test images as PNG files in class folders; `gray` of them saved as grayscale
    and `small` of them shrunk to 16x16."""
    x, y = _cifar(per_class)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img)
        if i < gray:
            im = im.convert("L")
        elif i < gray + small:
            im = im.resize((16, 16), Image.BILINEAR)
        im.save(folder / f"{i:05d}.png")
    return root


def test_an_image_folder_is_decoded_at_the_input_size_and_counted(tmp_path):
    d = load_dataset(str(write_folder(tmp_path / "imgs", gray=3, small=2)), input_size=24)
    assert d.input_shape == (3, 24, 24) and d.labels == CLASSES
    assert len(d.y_train) + len(d.y_val) + len(d.y_test) == 200
    upsampled = "2 of 200 images upsampled (shorter side below 24 px)"
    assert d.notes == ["3 of 200 images converted to RGB", upsampled]
    assert "center-crop 24x24" in d.preprocessing.describe()["resize"]


def test_compress_runs_on_an_image_folder(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    result = CliRunner().invoke(cli.cli, [
        "compress", "--target", "android", "--data", str(folder), "--input-size", "32",
        "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run"),
        "--epochs", "2", "--distill-epochs", "1",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    bundle = tmp_path / "out" / "android"
    model = json.loads((bundle / "model.json").read_text())
    assert model["inputs"][0]["shape"] == [1, 3, 32, 32] and model["labels"] == CLASSES
    assert model["preprocessing"]["resize"].startswith("convert to RGB")
    report = json.loads((bundle / "report.json").read_text())
    assert {b["parity"]["state"] for b in report["backends"].values()} == {"verified"}


def _bad(tmp_path, make):
    folder = write_folder(tmp_path / "imgs", per_class=4)
    path = make(folder)
    result = CliRunner().invoke(cli.cli, [
        "compress", "--target", "android", "--data", str(folder), "--input-size", "16",
        "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run"),
    ])  # fmt: skip
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert str(path) in errors[0], errors[0]
    assert not (tmp_path / "run").exists()
    return errors[0]


def _corrupt(folder):
    p = folder / "cat" / "bad.png"
    p.write_bytes((next((folder / "cat").glob("*.png"))).read_bytes()[:60])  # truncated
    return p


def _split_classes(folder):
    for split in ("train", "test"):
        (folder / split).mkdir()
    for c in CLASSES:
        (folder / c).rename(folder / "train" / c)
        if c != "truck":
            (folder / "test" / c).mkdir()
            for f in sorted((folder / "train" / c).glob("*.png"))[:1]:
                f.rename(folder / "test" / c / f.name)
    return folder / "test"


@pytest.mark.parametrize(
    "make, pattern",
    [
        (_corrupt, "corrupt or truncated image"),
        (lambda f: (f / "dog" / "notes.txt").write_text("x") and f / "dog" / "notes.txt",
         "not an image file"),
        (lambda f: (f / "zebra").mkdir() or f / "zebra", "empty class folder"),
        (_split_classes, "class folders differ"),
    ],
)  # fmt: skip
def test_a_bad_image_folder_is_one_line_naming_the_path(tmp_path, make, pattern):
    assert pattern in _bad(tmp_path, make)


def test_input_size_is_only_for_image_folders():
    with pytest.raises(Exception, match="applies to image folders"):
        load_dataset("digits", input_size=32)
