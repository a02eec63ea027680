"""Shared fixtures: one real (small) compress run reused by the tests that read a bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


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


@pytest.fixture(scope="session")
def cifar_photos(tmp_path_factory) -> Path:
    """The first 12 real CIFAR-10 training images of each class as PNG class folders."""
    from PIL import Image

    if not CIFAR.is_dir():
        pytest.fail(f"{CIFAR}: the real CIFAR-10 arrays this test reads are missing")
    root = tmp_path_factory.mktemp("cifar-photos")
    with np.load(CIFAR / "train.npz") as f:
        x, y = f["x"], f["y"]
    for c in range(10):
        (root / f"class{c}").mkdir()
        for i in np.flatnonzero(y == c)[:12]:
            Image.fromarray(x[i]).save(root / f"class{c}" / f"{i:05d}.png")
    return root


# report.json: the keys whose numbers are declared inputs (what the run was asked for, or what a
# file declares about itself), not figures the run produced; everything else must carry a source
DECLARED_INPUTS = {
    "recipe",  # the resolved recipe: epochs, learning rates, fractions asked for
    "seed",  # the seed asked for
    "settings",  # what one measurement or fit was asked to do: threads, runs, folds, QAT epochs
    "tolerance",  # the thresholds a file is held to (chosen per backend and precision)
    "versions",  # library and file-format versions (opset, Core ML specification)
    "slimship_report",  # the report format's version
    "model",  # the shipped model's spec: channels, classes, input size and shape
    "io",  # the files' declared inputs and outputs: shapes, dtypes, int8 scale and zero point
    "shape",  # a tensor shape a file declares (Core ML's structural check)
    "limit",  # a budget line's limit, from the user's budgets file (report["gate"])
}
SOURCES = ("measured", "estimated", "counted")


def unsourced(report: dict) -> list[str]:
    """Where report.json has a number without a source: a bare number outside DECLARED_INPUTS,
    or a malformed figure. Two forms carry a source: a figure ({"value", "unit", "source",
    "on"}, its value a number, None or an array of them; numbers beside the value, such as a
    standard error, share its source), and one source on an enclosing object whose numbers are
    arrays or tables ({..., "unit" or "units", "source", "on"} and no "value"). A budget line
    without a figure to check has source None, and no number but its limit."""
    found = []

    def walk(node, path):
        if isinstance(node, dict) and node.get("source") is not None:
            found.extend(f"{path}: {p}" for p in _malformed(node))
        elif isinstance(node, dict):
            for k, v in node.items():
                if k not in DECLARED_INPUTS:
                    walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif _number(node):
            found.append(f"{path}: bare number {node}")

    walk(report, "report")
    return found


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _malformed(node: dict) -> list[str]:
    problems = []
    if node["source"] not in SOURCES:
        problems.append(f"source {node['source']!r} is none of {SOURCES}")
    if not isinstance(node.get("on"), str) or not node["on"]:
        problems.append("no 'on': what it was measured, estimated or counted on")
    if "value" in node:
        v = node["value"]
        if not all(x is None or _number(x) for x in (v if isinstance(v, list) else [v])):
            problems.append(f"value {v!r} is not a number, None or an array of them")
        if "unit" not in node:
            problems.append("a figure without a unit")
    else:  # one source for a whole object: it must enclose arrays or tables
        if "unit" not in node and "units" not in node:
            problems.append("no unit(s)")
        if not any(isinstance(v, (list, dict)) for v in node.values()):
            problems.append("neither a value nor arrays or tables under one source")
    return problems


@pytest.fixture
def every_number_sourced():
    """Asserts that a report has no number without a source (see `unsourced`)."""

    def check(report: dict) -> None:
        found = unsourced(report)
        assert not found, "\n".join(found[:40])

    return check
