"""Bad input at every door (issue 25): one line naming the problem, exit 2, before any work."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import cli
from ground.errors import UsageError
from pipeline.config import load_recipe

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh")
)


def _run(*args):
    result = CliRunner().invoke(cli.cli, [str(a) for a in args])
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    return result.exit_code, errors, result.output


def _refused(tmp_path, pattern, *args):
    code, errors, output = _run(*args)
    assert code == 2, output
    assert len(errors) == 1 and pattern in errors[0] and len(errors[0]) < 400, output
    assert not (tmp_path / "run").exists()  # nothing was started


RECIPES = {
    "billion laughs": (LAUGHS.encode(), "aliases"),
    "NaN learning rate": (b"train: {lr: .nan}\n", "train.lr must be a finite number"),
    "10^23 epochs": (b"train: {epochs: 100000000000000000000000}\n", "integer of at most"),
    "not UTF-8": (b"train: {lr: \xff\xfe}\n", "not UTF-8"),
    "no thread counts": (b"profile: {threads: []}\n", "profile.threads must list"),
}


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_a_bad_recipe_file_is_one_line(tmp_path, case):
    text, pattern = RECIPES[case]
    (tmp_path / "r.yaml").write_bytes(text)
    _refused(tmp_path, pattern, "compress", "--target", "android", "--config",
             tmp_path / "r.yaml", "--run-dir", tmp_path / "run", "--out", tmp_path / "out")  # fmt: skip


@pytest.mark.parametrize(
    "flags, pattern",
    [
        (["--temperature", "nan"], "distill.temperature must be a finite number"),
        (["--set", "train.lr=.inf"], "train.lr must be a finite number"),
        (["--set", "train.ignored=[&a [1, 2], *a, *a]"], "aliases"),
        (["--set", "train.epochs=" + "9" * 5000], "not valid YAML"),
        (["--set", "train.epochs=" + "9" * 4000], "integer of at most"),
    ],
)
def test_a_bad_flag_value_is_one_short_line(tmp_path, flags, pattern):
    _refused(tmp_path, pattern, "compress", "--target", "android", *flags,
             "--run-dir", tmp_path / "run", "--out", tmp_path / "out")  # fmt: skip


def _arrays(case):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (200, 8, 8, 1)).astype(np.uint8), np.arange(200) % 10
    return {
        "label -1": (x, np.where(y == 0, -1, y), "labels must be in 0.."),
        "string labels": (x, y.astype(str), "y must be integer class indices"),
        "no images": (x[:0], y[:0], "too few to split"),
        "three images": (x[:3], y[:3], "too few to split"),
        "NaN pixels": (np.where(x > 250, np.nan, x.astype(np.float32)), y, "NaN/Inf pixel"),
        "label 2.5": (x, y + 0.5, "y must be integer class indices"),
        "label 10^9": (x, np.where(y == 0, 10**9, y), "labels must be in 0.."),
    }[case]


@pytest.mark.parametrize(
    "case",
    ["label -1", "string labels", "no images", "three images", "NaN pixels", "label 2.5",
     "label 10^9"],
)  # fmt: skip
def test_bad_data_is_one_line(tmp_path, case):
    x, y, pattern = _arrays(case)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    _refused(tmp_path, pattern, "compress", "--target", "android", "--data", tmp_path / "d.npz",
             "--run-dir", tmp_path / "run", "--out", tmp_path / "out")  # fmt: skip


def test_splits_of_different_image_sizes_are_one_line(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "d"
    d.mkdir()
    np.savez(d / "train.npz", x=rng.integers(0, 255, (200, 8, 8, 1)), y=np.arange(200) % 10)
    np.savez(d / "test.npz", x=rng.integers(0, 255, (50, 16, 16, 1)), y=np.arange(50) % 10)
    _refused(tmp_path, "both splits must have one size", "compress", "--target", "android",
             "--data", d, "--run-dir", tmp_path / "run", "--out", tmp_path / "out")  # fmt: skip


@pytest.mark.parametrize(
    "budget, pattern",
    [
        ("budgets:\n  - {backend: 5, max_file_bytes: 100}\n", "backend must be a string"),
        ("budgets:\n  - {backend: '*', max_file_bytes: big}\n", "max_file_bytes must be an int"),
        ('budgets:\n  - {backend: "a\\x01b", max_file_bytes: 100}\n', "must be a backend name"),
        ("budgets:\n  - {backend: '\xff', max_file_bytes: 100}\n", "not UTF-8"),
    ],
)
def test_a_bad_budget_is_one_line(android_bundle, tmp_path, budget, pattern):
    (tmp_path / "b.yaml").write_bytes(budget.encode("latin-1"))
    _refused(tmp_path, pattern, "gate", android_bundle["bundle"], "--budget", tmp_path / "b.yaml")


def test_output_paths_that_are_directories_are_refused_before_work(android_bundle, tmp_path):
    (tmp_path / "b.yaml").write_text("budgets:\n  - {backend: '*', max_file_bytes: 10}\n")
    b = android_bundle["bundle"]
    _refused(tmp_path, "--junit", "gate", b, "--budget", tmp_path / "b.yaml", "--junit", tmp_path)
    _refused(tmp_path, "--json", "profile", b / "model.tflite", "--json", tmp_path)
    _refused(tmp_path, "--threads -4", "profile", b / "model.tflite", "--threads", "-4")


@settings(max_examples=100, deadline=None)
@given(
    key=st.sampled_from(["train.epochs", "train.lr", "distill.temperature", "profile.threads",
                         "prune.macs_fraction", "quantize.calibration_images"]),
    value=st.one_of(st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=300),
                    st.lists(st.integers(-(10**30), 10**30), max_size=3)),
)  # fmt: skip
def test_any_override_value_loads_or_is_one_short_line(key, value):
    try:
        load_recipe(None, {key: value})
    except UsageError as e:
        assert "\n" not in str(e) and len(str(e)) < 400


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 2])
def test_trust_pickle_on_an_empty_or_random_file_is_one_line(tmp_path, content):
    (tmp_path / "w.pt").write_bytes(content)
    _refused(tmp_path, "not a readable checkpoint", "compress", "--target", "android",
             "--weights", tmp_path / "w.pt", "--trust-pickle", "--run-dir", tmp_path / "run",
             "--out", tmp_path / "out")  # fmt: skip


def test_a_pte_with_flipped_header_bytes_is_an_error_not_an_abort(android_bundle, tmp_path):
    data = bytearray((android_bundle["bundle"] / "model.pte").read_bytes())
    data[4] ^= 0xFF
    data[5] ^= 0xFF
    (tmp_path / "model.pte").write_bytes(bytes(data))
    _refused(tmp_path, "not a readable .pte file", "profile", tmp_path / "model.pte")


@pytest.mark.parametrize("name, cut", [("model.json", 0), ("golden.npz", 100), ("report.json", 10)])
def test_verify_arm64_names_an_unreadable_bundle_file(android_bundle, tmp_path, name, cut):
    bundle = tmp_path / "android"
    shutil.copytree(android_bundle["bundle"], bundle)
    (bundle / name).write_bytes((bundle / name).read_bytes()[:cut])
    _refused(tmp_path, f"{name}: unreadable", "verify-arm64", bundle)


def test_a_budget_given_through_a_pipe_is_read(android_bundle):
    """`--budget <(cat b.yaml)`: the shell passes /dev/fd/N, which is not a regular file."""
    r, w = os.pipe()
    os.write(w, b"budgets:\n  - {backend: '*', max_file_bytes: 100000000}\n")
    os.close(w)
    try:
        code, errors, output = _run("gate", android_bundle["bundle"], "--budget", f"/dev/fd/{r}")
    finally:
        os.close(r)
    assert code == 0 and not errors, output
