"""--data DIR in the ImageFolder convention: one sub-folder per class of JPEG/PNG/WebP images,
either directly in DIR (slimship then splits them, stratified, with a fixed seed) or under
DIR/train and DIR/test (and optionally DIR/val).

Every image is decoded with Pillow, converted to RGB, resized so that its shorter side is
`size` (bilinear) and center-cropped to size x size: the steps an app must repeat, which
model.json's preprocessing states. Every image is decoded once up front, to find a corrupt
file before any work and count conversions, and then again whenever its rows are indexed
(`Images.x` is a LazyRows): memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ground.errors import UsageError
from pipeline.rows import LazyRows

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "val", "test")


@dataclass
class Images:
    x: LazyRows  # (N, size, size, 3) uint8, decoded when indexed
    y: np.ndarray  # (N,) int64, index into the classes
    converted: int = 0  # images that were not RGB (grayscale, RGBA, palette) before conversion
    upsampled: int = 0  # images whose shorter side was below `size`
    files: list[Path] = field(default_factory=list)  # the source file of each image


def is_image_folder(path: Path) -> bool:
    """A directory whose sub-folders are classes (or train/test splits of classes)."""
    return path.is_dir() and any(p.is_dir() for p in path.iterdir())


def resize_steps(size: int) -> dict:
    """How an image file becomes the (size, size, 3) `raw` array, for model.json."""
    return {
        "decode": "the file as RGB (Pillow's convert('RGB') for grayscale, RGBA, palette)",
        "resize_shorter_side": size,
        "resize_rule": "shorter side -> size; longer side -> max(size, round(longer * size / "
        "shorter)); Pillow Image.resize(..., Image.BILINEAR)",
        "center_crop": [size, size],
        "crop_rule": "left = (width - size) // 2, top = (height - size) // 2",
    }


def read_splits(path: Path, size: int) -> tuple[list[str], dict[str, Images]]:
    """(class names, {split: images}) with split in train/val/test; a folder without split
    sub-folders comes back as {"all": images}."""
    given = [s for s in SPLITS if (path / s).is_dir()]
    if not given:
        classes = _classes(path)
        return classes, {"all": _read(path, classes, size)}
    if "train" not in given or "test" not in given:
        raise UsageError(f"--data {path}: has {'/'.join(given)}/ but needs both train/ and test/")
    classes = _classes(path / "train")
    for split in given[1:]:
        other = _classes(path / split)
        if other != classes:
            diff = sorted(set(classes) ^ set(other))
            raise UsageError(
                f"--data {path / split}: its class folders differ from {path / 'train'}'s "
                f"({', '.join(diff[:5])}); every split needs the same classes"
            )
    return classes, {s: _read(path / s, classes, size) for s in given}


def _classes(folder: Path) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"--data {folder}: no class sub-folders")
    return classes


def _read(folder: Path, classes: list[str], size: int) -> Images:
    out = Images(None, np.zeros(0, np.int64))
    ys = []
    for label, name in enumerate(classes):
        for f in _image_files(folder / name):
            _decode(f, size, out)  # a bad file fails now, not in the middle of training
            ys.append(label)
            out.files.append(f)
    files = list(out.files)
    out.y = np.asarray(ys, np.int64)
    out.x = LazyRows(
        len(files), (size, size, 3), np.uint8, lambda idx: _decode_many(files, idx, size)
    )
    return out


def _decode_many(files: list[Path], idx: np.ndarray, size: int) -> np.ndarray:
    if len(idx) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([_decode(files[i], size, None) for i in idx])


def digest(parts: dict[str, Images]) -> str:
    """sha256 over every image file's bytes, split by split, in reading order."""
    h = hashlib.sha256()
    for split in sorted(parts):
        for f in parts[split].files:
            h.update(f"{split}/{f.parent.name}/{f.name}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _image_files(class_dir: Path) -> list[Path]:
    files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
    for p in files:
        if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise UsageError(
                f"--data {p}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}); move it "
                "out of the class folder"
            )
    if not files:
        raise UsageError(f"--data {class_dir}: empty class folder; add images or remove it")
    return files


def _decode(path: Path, size: int, tally: Images | None) -> np.ndarray:
    """The file as (size, size, 3) uint8; `tally` counts conversions and upsamplings."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                if tally is not None:
                    tally.converted += 1
                img = img.convert("RGB")
            return _resize_crop(img, size, tally)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise UsageError(f"--data {path}: corrupt or truncated image ({first})") from None


def _resize_crop(img, size: int, tally: Images | None) -> np.ndarray:
    from PIL import Image

    w, h = img.size
    if min(w, h) < size and tally is not None:
        tally.upsampled += 1
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
