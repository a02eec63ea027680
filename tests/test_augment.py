"""Training-time augmentation (issue 24): flip, pad-and-crop and random-resized-crop on training
batches only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ground.errors import UsageError
from pipeline.augment import for_training
from pipeline.config import AugmentConfig, load_recipe
from pipeline.data import Preprocessing

PRE = Preprocessing(raw="test", scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
X = torch.arange(4 * 3 * 6 * 6, dtype=torch.float32).reshape(4, 3, 6, 6)


def test_off_by_default():
    assert for_training(AugmentConfig(), PRE) is None


def test_flip_mirrors_some_images_and_leaves_the_others():
    torch.manual_seed(0)
    out = for_training(AugmentConfig(flip=True), PRE)(X.repeat(8, 1, 1, 1))
    same = [torch.equal(o, x) for o, x in zip(out, X.repeat(8, 1, 1, 1))]
    mirrored = [torch.equal(o, x.flip(2)) for o, x in zip(out, X.repeat(8, 1, 1, 1))]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


def test_pad_crop_shifts_each_image_and_fills_with_black():
    torch.manual_seed(1)
    p = 2
    out = for_training(AugmentConfig(pad_crop=p), PRE)(X)
    black = -torch.tensor(PRE.mean) / torch.tensor(PRE.std)
    padded = black[None, :, None, None].expand(4, 3, 10, 10).clone()
    padded[:, :, p:-p, p:-p] = X
    for o, pad in zip(out, padded):  # each output is one 6x6 window of its padded image
        windows = [pad[:, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.allclose(o, w) for w in windows)


def test_resized_crop_shows_part_of_the_image_at_full_size():
    """An image whose value is its column index: a crop of width fraction s resized back to the
    full width spans about s of the columns, so the output's column range shrinks with s."""
    torch.manual_seed(2)
    cols = torch.arange(32, dtype=torch.float32).expand(64, 3, 32, 32)
    out = for_training(AugmentConfig(resized_crop=0.25), PRE)(cols)
    spans = out[:, 0, 16, -1] - out[:, 0, 16, 0]  # last minus first column, middle row
    assert out.shape == cols.shape
    assert float(spans.min()) >= 0.25**0.5 * (4 / 3) ** -0.5 * 31 - 2  # the smallest box
    assert float(spans.max()) <= 31 and float(spans.min()) < 0.8 * 31


def test_augment_is_a_recipe_section_with_checked_values():
    r = load_recipe(None, {"augment.flip": True, "augment.pad_crop": 4})
    assert r.augment.enabled and r.augment.pad_crop == 4
    with pytest.raises(UsageError, match="augment.pad_crop must be in 0..64"):
        load_recipe(None, {"augment.pad_crop": 100})
    with pytest.raises(UsageError, match="augment.resized_crop must be in 0..1"):
        load_recipe(None, {"augment.resized_crop": 1.5})


def test_the_train_key_names_the_augmentation_only_when_it_is_on(tmp_path):
    from pipeline.data import load_dataset
    from pipeline.rundir import RunDir
    from pipeline.stages import train
    from pipeline.stages._job import Job

    spec = {"name": "small_cnn", "in_channels": 1, "num_classes": 10, "input_size": 8,
            "input_shape": [1, 8, 8]}  # fmt: skip
    data = load_dataset("digits")
    off = train.key(Job(RunDir(tmp_path), data, load_recipe(None), spec, 0), None, None)
    on_recipe = load_recipe(None, {"augment.flip": True})
    on = train.key(Job(RunDir(tmp_path), data, on_recipe, spec, 0), None, None)
    assert "augment" not in off and on["augment"] == {
        "flip": True,
        "pad_crop": 0,
        "resized_crop": 0,
    }


def test_fit_passes_every_training_image_through_the_augmentation_once_per_epoch():
    from pipeline.train import fit

    seen = []

    def augment(x):
        seen.append(len(x))
        return x

    x, y = np.zeros((50, 1, 4, 4), np.float32), np.arange(50) % 2
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    fit(model, x, y, epochs=2, batch_size=16, lr=0.01, augment=augment)
    assert sum(seen) == 2 * 50
