"""`cli.py train` and `cli.py distill`: compress's stages up to train / distill, the model
written to --out, in compress's run directory so that the next command reuses what is done."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(cli.cli, list(args))


@pytest.mark.slow
def test_train_then_distill_then_compress_reuse_the_run_directory(tmp_path):
    run, teacher, student = tmp_path / "run", tmp_path / "teacher", tmp_path / "student"
    # two gloo ranks, started by --nproc, as compress --nproc does
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "train",
            "--epochs",
            "4",
            "--run-dir",
            str(run),
            "--out",
            str(teacher),
            "--nproc",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting 2 training processes" in proc.stdout + proc.stderr
    assert sorted(p.name for p in teacher.iterdir()) == ["model.json", "model.safetensors"]
    assert json.loads((teacher / "model.json").read_text())["spec"]["name"] == "small_cnn"

    result = invoke(
        "distill",
        "--target",
        "android",
        "--epochs",
        "4",
        "--distill-epochs",
        "3",
        "--run-dir",
        str(run),
        "--out",
        str(student),
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "[train] reused" in result.output  # the teacher trained by `cli.py train`
    from pipeline.checkpoint import load_model
    from pipeline.data import load_dataset
    from pipeline.train import accuracy, predict

    model, spec, plan = load_model(student)  # rebuilt from the pruning plan, no pickle
    assert plan is not None and spec["name"] == "small_cnn"
    d = load_dataset("digits")
    assert accuracy(predict(model, d.x_test), d.y_test) >= 0.9
    teacher_model, _, _ = load_model(teacher)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(model) < 0.75 * n(teacher_model)

    # compress with the same options finds train, prune and distill done
    result = invoke(
        "compress",
        "--target",
        "android",
        "--epochs",
        "4",
        "--distill-epochs",
        "3",
        "--run-dir",
        str(run),
        "--out",
        str(tmp_path / "dist"),
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    for stage in ("train", "prune", "distill"):
        assert f"[{stage}] reused" in result.output, stage


def test_train_needs_an_out_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    result = invoke("train", "--out", str(f), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: --out {f}: exists and is not a directory")
    assert f.read_text() == "keep me" and not (tmp_path / "run").exists()


def test_distill_needs_a_target_and_checks_it_first(tmp_path):
    result = invoke("distill", "--out", str(tmp_path / "s"))
    assert result.exit_code == 2 and "--target" in result.output
    result = invoke(
        "distill",
        "--target",
        "toaster",
        "--out",
        str(tmp_path / "s"),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert result.exit_code == 2 and "toaster" in result.output
    assert not (tmp_path / "run").exists()


def test_written_files_are_readable_under_the_umask(tmp_path):
    """Files written whole-then-renamed get the mode open() would give, not mkstemp's 0o600."""
    from pipeline.rundir import umask_mode, write_bytes

    old = os.umask(0o022)
    try:
        write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644 == umask_mode()
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"x"
