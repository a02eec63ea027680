"""--data DIR of class folders (issue 24): real CIFAR-10 images written as PNG files, decoded,
resized and center-cropped at --input-size, through compress; bad folders are one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from pipeline.data import load_dataset
from pipeline.rows import LazyRows
from targets import get_backend

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
    assert d.preprocessing.describe()["resize"]["center_crop"] == [24, 24]


def test_an_image_folders_inputs_are_made_from_the_files_when_indexed(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    d = load_dataset(str(folder), input_size=20)
    assert isinstance(d.x_train, LazyRows) and d.x_train.shape[1:] == (3, 20, 20)
    for i, f in enumerate(d.test_files):  # the first test file, rebuilt as an app would
        want = _model_input(f.read_bytes(), d.preprocessing.describe())
        np.testing.assert_array_equal(d.x_test[i : i + 1], want)
        if i == 2:
            break
    # the files are read again when indexed: a replaced file gives new inputs
    Image.new("RGB", (20, 20), (255, 0, 0)).save(d.test_files[0])
    assert np.all(d.x_test[0][0] == d.x_test[0][0].max())


def test_compress_runs_on_an_image_folder(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    result = CliRunner().invoke(cli.cli, [
        "compress", "--target", "android", "--data", str(folder), "--input-size", "28",
        "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run"),
        "--epochs", "2", "--distill-epochs", "1",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    bundle = tmp_path / "out" / "android"
    model = json.loads((bundle / "model.json").read_text())
    assert model["inputs"][0]["shape"] == [1, 3, 28, 28] and model["labels"] == CLASSES
    report = json.loads((bundle / "report.json").read_text())
    assert {b["parity"]["state"] for b in report["backends"].values()} == {"verified"}
    app_engineers_check(bundle, model)


def _model_input(raw_file: bytes, pre: dict) -> np.ndarray:
    """What an app does with an image file, from model.json's preprocessing alone."""
    steps, n = pre["resize"], pre["resize"]["resize_shorter_side"]
    img = Image.open(io.BytesIO(raw_file)).convert("RGB")
    w, h = img.size
    short = min(w, h)
    size = (max(n, round(w * n / short)), max(n, round(h * n / short)))
    img = img.resize(size, Image.BILINEAR)
    left, top = (size[0] - n) // 2, (size[1] - n) // 2
    raw = np.asarray(img.crop((left, top, left + n, top + n)), np.uint8)
    assert steps["center_crop"] == [n, n] and pre["layout"] == "NCHW"
    x = raw.astype(np.float32) * np.float32(pre["scale"])
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def app_engineers_check(bundle: Path, model: dict) -> None:
    """From the raw files in golden.npz and model.json only: the model inputs, bit for bit, and
    each file's golden outputs through its own runtime."""
    golden = np.load(bundle / "golden.npz")
    keys = model["golden"]["raw_keys"]
    assert len(keys) == model["golden"]["count"] == 8
    for i, key in enumerate(keys):
        x = _model_input(golden[key].tobytes(), model["preprocessing"])
        np.testing.assert_array_equal(x[0], golden["x"][i])
        for name, entry in model["backends"].items():
            out = get_backend(name).load(bundle / entry["file"])(x)
            np.testing.assert_allclose(out[0], golden[entry["golden_key"]][i], rtol=0, atol=1e-6)


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
