"""Shared fixtures: one real (small) compress run reused by the tests that read a bundle."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import cli


@pytest.fixture(scope="session")
def android_bundle(tmp_path_factory):
    """`compress --target android` on digits with shortened training, through click."""
    root = tmp_path_factory.mktemp("compress")
    result = CliRunner().invoke(
        cli.cli,
        [
            "compress",
            "--target",
            "android",
            "--out",
            str(root / "dist"),
            "--run-dir",
            str(root / "run"),
            "--epochs",
            "10",
            "--distill-epochs",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {
        "bundle": root / "dist" / "android",
        "run": root / "run",
        "root": root,
        "output": result.output,
    }
