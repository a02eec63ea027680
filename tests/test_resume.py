"""Kill a compress run (SIGKILL: no cleanup runs) during training, during export and while the
bundle is being written; the re-run completes, reuses what was finished, and equals an
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALL = [
    "train",
    "prune",
    "distill",
    "export/executorch-xnnpack-int8",
    "verify/executorch-xnnpack-int8",
    "profile/executorch-xnnpack-int8",
    "export/tflite-int8",
    "verify/tflite-int8",
]


def compress(tmp_path, kill_at=""):
    env = {**os.environ, "SLIMSHIP_KILL_AT": kill_at}
    return subprocess.run(
        [
            sys.executable,
            "cli.py",
            "compress",
            "--target",
            "android",
            "--out",
            str(tmp_path / "out"),
            "--run-dir",
            str(tmp_path / "run"),
            "--epochs",
            "10",
            "--distill-epochs",
            "8",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def figures(report):
    stages = {k: v["accuracy"]["value"] for k, v in report["stages"].items() if "accuracy" in v}
    files = {
        k: (v["parity"]["file_accuracy"]["value"], v["parity"]["state"])
        for k, v in report["backends"].items()
    }
    return stages, files


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted run, started the same way (a fresh process: the same thread count
    and state as the killed and resumed runs; float sums depend on the thread count)."""
    root = tmp_path_factory.mktemp("clean")
    proc = compress(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((root / "out" / "android" / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_at, reused",
    [
        ("train teacher:epoch3", []),
        ("export:tflite", ALL[:6]),
        ("bundle:assembled", ALL),
    ],
)
def test_a_killed_run_resumes_and_equals_an_uninterrupted_one(tmp_path, clean, kill_at, reused):
    first = compress(tmp_path, kill_at)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert not (tmp_path / "out" / "android").exists()  # nothing that looks complete
    second = compress(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in reused:
        assert f"[{stage}] reused" in second.stderr, stage
    not_reused = [s for s in ALL if s not in reused]
    for stage in not_reused:
        assert f"[{stage}] reused" not in second.stderr, stage
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["android"]  # no .partial
    resumed = json.loads((tmp_path / "out" / "android" / "report.json").read_text())
    assert figures(resumed) == figures(clean)
