"""Datasets: the bundled scikit-learn digits (default), arrays from .npz files, or an image
folder (pipeline/imagefolder.py).

Every dataset comes back preprocessed (float32, NCHW) together with the exact preprocessing
that maps raw data to model input, so the bundle can tell an app team how to feed the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ground.errors import UsageError
from pipeline import imagefolder
from pipeline.rows import LazyRows, take

SPLIT_SEED = 0  # fixed, so the test split is the same whatever the training seed
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1  # of what remains after the test split; held out from training
MAX_CLASSES = 10_000  # a label beyond this is a data error, not a classifier of that size
MIN_PER_CLASS = 3  # training images per class: the stratified validation split needs some


@dataclass(frozen=True)
class Preprocessing:
    """raw (N, H, W, C) -> ((raw * scale) - mean) / std per channel -> (N, C, H, W) float32."""

    raw: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str = "NCHW"
    resize: dict | None = None  # image folders: how a file becomes `raw` (RGB, resize, crop)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        x = raw.astype(np.float32) * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        # a real copy: ascontiguousarray keeps odd strides when C == 1, and torch.export
        # would then record a channels-last input
        return x.transpose(0, 3, 1, 2).copy(order="C")

    def describe(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["formula"] = "x = ((raw * scale) - mean[c]) / std[c], then HWC -> CHW"
        return d


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # (N, C, H, W) float32; a LazyRows for an image folder
    y_train: np.ndarray  # (N,) int64
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    preprocessing: Preprocessing
    notes: list[str] = field(default_factory=list)  # e.g. images converted or upsampled
    test_files: list[Path] = field(default_factory=list)  # image folders: x_test's source files
    files_digest: str | None = None  # image folders: sha256 of the files (see fingerprint)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """sha256 of the model inputs and labels; for an image folder, of its files' bytes and
        the preprocessing (its inputs are made from them when indexed)."""
        h = hashlib.sha256()
        arrays = (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)
        if self.files_digest is not None:
            h.update(f"{self.files_digest} {self.preprocessing.describe()}".encode())
            arrays = arrays[1::2]
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def summary(self) -> str:
        c, hgt, w = self.input_shape
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} val / "
            f"{len(self.y_test)} test, input {c}x{hgt}x{w}, {self.num_classes} classes"
            + "".join(f"; {n}" for n in self.notes)
        )


def load_dataset(
    spec: str, limit_train: int | None = None, input_size: int | None = None
) -> Dataset:
    """`digits`, a directory holding train.npz and test.npz, one .npz with x and y, or an
    image folder (decoded at `input_size`, 224 unless given)."""
    path = Path(spec)
    folder = spec != "digits" and path.is_dir() and not (path / "train.npz").is_file()
    if input_size is not None and not folder:
        raise UsageError(
            f"--input-size {input_size}: applies to image folders; --data {spec} has a fixed size"
        )
    if spec == "digits":
        return _digits()
    if not path.exists():
        raise UsageError(
            f"--data {spec}: no such file or directory (use 'digits', an .npz, a directory "
            "with train.npz and test.npz, or an image folder)"
        )
    if folder:
        return _image_folder(path, input_size or 224)
    if path.is_dir():
        train, test = path / "train.npz", path / "test.npz"
        if not (train.is_file() and test.is_file()):
            raise UsageError(f"--data {spec}: directory has no train.npz and test.npz")
        xtr, ytr = _read_npz(train)
        xte, yte = _read_npz(test)
    else:
        x, y = _read_npz(path)
        xtr, ytr, xte, yte = _split(x, y, TEST_FRACTION)
    if limit_train:
        xtr, ytr = xtr[:limit_train], ytr[:limit_train]
    _check_splits(spec, xtr, ytr, xte, yte)
    labels = _labels_for(path, int(max(ytr.max(), yte.max())) + 1)
    return _build(
        path.name,
        xtr,
        ytr,
        xte,
        yte,
        labels,
        scale=1 / 255,
        raw=f"uint8 images (H, W, C), values 0..255, from {path.name}",
    )


def _image_folder(path: Path, size: int) -> Dataset:
    if not imagefolder.is_image_folder(path):
        raise UsageError(f"--data {path}: no train.npz/test.npz and no class sub-folders of images")
    classes, parts = imagefolder.read_splits(path, size)
    if "all" in parts:
        a = parts["all"]
        # split the indices: the same partition as splitting the images, with their files
        itr, ytr, ite, yte = _split(np.arange(len(a.y)), a.y, TEST_FRACTION)
        xtr, xte, test_files = a.x.take(itr), a.x.take(ite), [a.files[i] for i in ite]
    else:
        (xtr, ytr), (xte, yte) = ((parts[s].x, parts[s].y) for s in ("train", "test"))
        test_files = parts["test"].files
    _check_splits(str(path), xtr, ytr, xte, yte)
    n = len(ytr) + len(yte)
    converted, upsampled = (
        sum(getattr(p, k) for p in parts.values()) for k in ("converted", "upsampled")
    )
    notes = [f"{converted} of {n} images converted to RGB"] if converted else []
    notes += (
        [f"{upsampled} of {n} images upsampled (shorter side below {size} px)"] if upsampled else []
    )
    d = _build(
        path.name,
        xtr,
        ytr,
        xte,
        yte,
        classes,
        scale=1 / 255,
        raw=f"RGB uint8 images (H, W, 3) = ({size}, {size}, 3), values 0..255",
        resize=imagefolder.resize_steps(size),
        val=(parts["val"].x, parts["val"].y) if "val" in parts else None,
    )
    d.notes, d.test_files = notes, test_files
    d.files_digest = imagefolder.digest(parts)
    return d


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images[..., None]  # (1797, 8, 8, 1), values 0..16
    xtr, ytr, xte, yte = _split(x, d.target, TEST_FRACTION)
    return _build(
        "digits",
        xtr,
        ytr,
        xte,
        yte,
        [str(i) for i in range(10)],
        scale=1 / 16,
        raw="8x8 grayscale (H, W, 1), integer values 0..16 (sklearn load_digits)",
    )


def _build(name, xtr, ytr, xte, yte, labels, scale, raw, resize=None, val=None) -> Dataset:
    """Preprocessing from the training images; `val` (x, y), or a split of the training set."""
    if val:
        xval, yval = val
    else:  # split the indices: image folders' rows are made only when indexed
        itr, ytr, ival, yval = _split(np.arange(len(ytr)), ytr, VAL_FRACTION)
        xtr, xval = take(xtr, itr), take(xtr, ival)
    mean, std = _moments(xtr, scale)
    pre = Preprocessing(raw=raw, scale=scale, mean=mean, std=std, resize=resize)
    as_int = lambda y: np.asarray(y, dtype=np.int64)
    return Dataset(
        name,
        _preprocessed(pre, xtr),
        as_int(ytr),
        _preprocessed(pre, xval),
        as_int(yval),
        _preprocessed(pre, xte),
        as_int(yte),
        labels,
        pre,
    )


def _moments(x, scale) -> tuple[tuple, tuple]:
    """Per-channel mean and std of the scaled training images (rows of a LazyRows are made
    256 at a time, so memory stays flat)."""
    if isinstance(x, LazyRows):
        total, sq, n = 0.0, 0.0, 0
        for i in range(0, len(x), 256):
            b = x[i : i + 256].astype(np.float64) * scale
            total, sq = total + b.sum(axis=(0, 1, 2)), sq + (b * b).sum(axis=(0, 1, 2))
            n += b.shape[0] * b.shape[1] * b.shape[2]
        m = total / n
        mean, sd = m, np.sqrt(np.maximum(sq / n - m * m, 0.0))
    else:
        scaled = x.astype(np.float64) * scale
        axes = tuple(range(scaled.ndim - 1))
        mean, sd = scaled.mean(axis=axes), scaled.std(axis=axes)
    return (
        tuple(round(float(v), 6) for v in mean),
        tuple(round(max(float(v), 1e-6), 6) for v in sd),
    )


def _preprocessed(pre: Preprocessing, x):
    if isinstance(x, LazyRows):
        h, w, c = x.shape[1:]
        return x.map(pre.apply, (c, h, w), np.float32)
    return pre.apply(x)


def _split(x, y, fraction):
    """Stratified split with a fixed seed: (x_keep, y_keep, x_out, y_out)."""
    from sklearn.model_selection import train_test_split

    try:
        xa, xb, ya, yb = train_test_split(
            x, y, test_size=fraction, random_state=SPLIT_SEED, stratify=y
        )
    except ValueError:  # a class too small to be in both parts, or too few images in all
        counts = np.bincount(y) if len(y) else np.zeros(1, int)
        raise UsageError(
            f"--data: {len(y)} images, the smallest class has {counts.min()}: too few to split "
            f"{fraction:.0%} off with every class in both parts; give more images per class"
        ) from None
    return xa, ya, xb, yb


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d or "y" not in d:
                raise UsageError(
                    f"--data {path}: an .npz needs arrays 'x' and 'y', found {sorted(d.files)}"
                )
            x, y = d["x"], d["y"]
    except (OSError, ValueError) as e:
        raise UsageError(f"--data {path}: not a readable .npz ({e})") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) != len(y) or y.ndim != 1:
        raise UsageError(
            f"--data {path}: x must be (N, H, W[, C]) with one label per image, "
            f"got x{tuple(x.shape)} y{tuple(y.shape)}"
        )
    return _checked_pixels(path, x), _checked_labels(path, y)


def _checked_pixels(path: Path, x: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UsageError(f"--data {path}: x must hold numbers, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise UsageError(f"--data {path}: x has {bad} NaN/Inf pixel values; fix or drop them")
    return x


def _checked_labels(path: Path, y: np.ndarray) -> np.ndarray:
    """Integer class indices 0..C-1: float labels must be whole numbers (2.5 is not a class)."""
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise UsageError(
            f"--data {path}: y must be integer class indices 0..C-1, got dtype {y.dtype}"
            + (f" (e.g. '{y[0]}')" if len(y) else "")
        )
    y = y.astype(np.int64)  # uint8 labels would wrap in the range checks below
    if len(y) and (y.min() < 0 or y.max() >= MAX_CLASSES):
        raise UsageError(
            f"--data {path}: labels must be in 0..{MAX_CLASSES - 1}, found {y.min()}..{y.max()}"
        )
    return y


def _check_splits(spec: str, xtr, ytr, xte, yte) -> None:
    """Same image shape in both splits, enough images, every class present in training."""
    if xtr.shape[1:] != xte.shape[1:]:
        raise UsageError(
            f"--data {spec}: training images are {xtr.shape[1:]} (H, W, C) but test images "
            f"are {xte.shape[1:]}; both splits must have one size"
        )
    if len(yte) == 0:
        raise UsageError(f"--data {spec}: the test split has no images")
    n = int(max(ytr.max(initial=-1), yte.max(initial=-1))) + 1
    counts = np.bincount(ytr, minlength=n)
    if len(counts) == 0 or counts.min() < MIN_PER_CLASS:
        few = [str(c) for c in np.flatnonzero(counts < MIN_PER_CLASS)[:5]]
        raise UsageError(
            f"--data {spec}: {len(ytr)} training images; class(es) {', '.join(few)} have fewer "
            f"than {MIN_PER_CLASS} (every class needs {MIN_PER_CLASS} for the validation split)"
        )


def _labels_for(path: Path, n: int) -> list[str]:
    for candidate in (path / "labels.txt", path.parent / "labels.txt"):
        if candidate.is_file():
            names = candidate.read_text().split("\n")
            names = [s.strip() for s in names if s.strip()]
            if len(names) == n:
                return names
    if n == 10 and "cifar" in str(path).lower():
        return [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
    return [str(i) for i in range(n)]
