import numpy as np
import pytest

from ground.errors import UsageError
from pipeline.data import load_dataset


def test_digits_splits_and_preprocessing():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.y_test) == 360 and len(d.y_train) + len(d.y_val) + len(d.y_test) == 1797
    assert d.x_train.dtype == np.float32 and d.x_train.flags.c_contiguous
    # standard strides, so torch.export records a plain NCHW input
    assert d.x_test[:1].strides == (256, 256, 32, 4)
    # the recorded preprocessing maps raw digits to exactly the model input
    from sklearn.datasets import load_digits

    raw = load_digits().images[..., None]
    again = d.preprocessing.apply(raw)
    assert any(np.array_equal(again[i], d.x_test[0]) for i in range(len(again)))
    # a fixed split: the same test set whatever else happens
    assert d.fingerprint() == load_dataset("digits").fingerprint()


def test_npz_file_and_directory(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (200, 6, 6, 3), dtype=np.uint8)
    y = np.repeat(np.arange(4), 50)
    np.savez(tmp_path / "one.npz", x=x, y=y)
    d = load_dataset(str(tmp_path / "one.npz"))
    assert d.input_shape == (3, 6, 6) and d.num_classes == 4 and len(d.y_test) == 40
    (tmp_path / "dir").mkdir()
    np.savez(tmp_path / "dir" / "train.npz", x=x[:150], y=y[:150] % 3)
    np.savez(tmp_path / "dir" / "test.npz", x=x[150:], y=y[150:] % 3)
    assert len(load_dataset(str(tmp_path / "dir")).y_test) == 50


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
        (lambda p: np.savez(p, a=np.zeros(3)), "needs arrays 'x' and 'y'"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, make, match):
    p = tmp_path / "bad.npz"
    make(p)
    with pytest.raises(UsageError, match=match):
        load_dataset(str(p))
