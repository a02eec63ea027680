"""Nothing lost, nothing silently wrong (issue 25): one run at a time per run directory and
bundle, a user's own folder is never replaced, and what reads a bundle checks its manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

import cli
from pipeline import bundle

ROOT = Path(__file__).resolve().parents[1]


def _compress_cmd(tmp_path, *extra):
    return [
        sys.executable, "cli.py", "compress", "--target", "android",
        "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run"),
        "--epochs", "2", "--distill-epochs", "1", *extra,
    ]  # fmt: skip


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_a_second_run_on_the_same_run_dir_and_out_fails_at_once_naming_the_holder(tmp_path):
    first = subprocess.Popen(
        _compress_cmd(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lock = tmp_path / "run" / ".lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    second = subprocess.run(
        _compress_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    out_first, _ = first.communicate(timeout=900)
    assert first.returncode == 0, out_first
    assert second.returncode == 1, second.stdout + second.stderr
    line = _one_error_line(second.stderr)
    assert f"is in use by pid {first.pid} on " in line, line
    bundle.verify(tmp_path / "out" / "android")  # the finished bundle matches its manifest


def test_a_folder_of_the_users_own_is_never_replaced(tmp_path):
    mine = tmp_path / "out" / "android"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own notes")
    result = CliRunner().invoke(
        cli.cli, ["compress", "--target", "android", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    assert "is not a slimship bundle" in _one_error_line(result.output)
    assert (mine / "notes.txt").read_text() == "my own notes"
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "out").write_text("a file")
    result = CliRunner().invoke(
        cli.cli, ["compress", "--target", "android", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    assert "is not a directory" in _one_error_line(result.output)


def _tampered_copy(android_bundle, tmp_path, name: str) -> Path:
    copy = tmp_path / "android"
    shutil.copytree(android_bundle["bundle"], copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    return copy


def _gate(report: Path, tmp_path, budget_text="budgets:\n  - {backend: '*', min_sqnr_db: 1}\n"):
    budget = tmp_path / "budget.yaml"
    budget.write_text(budget_text)
    return CliRunner().invoke(cli.cli, ["gate", str(report), "--budget", str(budget)])


def test_gate_refuses_a_bundle_whose_model_file_changed(android_bundle, tmp_path):
    copy = _tampered_copy(android_bundle, tmp_path, "model.pte")
    result = _gate(copy / "report.json", tmp_path)
    assert result.exit_code == 2, result.output
    assert "model.pte: differs from" in _one_error_line(result.output)


def test_gate_refuses_an_edited_report(android_bundle, tmp_path):
    copy = _tampered_copy(android_bundle, tmp_path, "report.json")
    result = _gate(copy, tmp_path)  # a bundle folder is accepted in place of its report.json
    assert result.exit_code == 2, result.output
    assert "report.json: differs from" in _one_error_line(result.output)


def test_profile_refuses_a_changed_file_of_a_bundle(android_bundle, tmp_path):
    copy = _tampered_copy(android_bundle, tmp_path, "model.pte")
    result = CliRunner().invoke(cli.cli, ["profile", str(copy / "model.pte")])
    assert result.exit_code == 2, result.output
    assert "model.pte: differs from" in _one_error_line(result.output)


def test_gate_on_a_report_with_nothing_to_check_exits_2(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"target": "android", "backends": {}, "stages": {}}))
    result = _gate(report, tmp_path)
    assert result.exit_code == 2, result.output
    assert "nothing to check" in _one_error_line(result.output)


def test_the_lock_is_released_when_its_holder_dies(tmp_path):
    """flock dies with its process: a killed run leaves no lock that blocks the next one."""
    code = (
        "import sys, time; from pathlib import Path; from pipeline import lock\n"
        "with lock.exclusive(Path(sys.argv[1]), 'x'):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / ".lock")], cwd=ROOT, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, 9)
    holder.wait()
    from pipeline import lock

    with lock.exclusive(tmp_path / ".lock", "x"):
        pass


def test_a_run_whose_export_fails_keeps_the_previous_bundle(android_bundle, tmp_path, monkeypatch):
    from targets.tflite import Tflite

    run, out = tmp_path / "run", tmp_path / "out"
    shutil.copytree(android_bundle["run"], run)
    shutil.copytree(android_bundle["bundle"], out / "android")
    shutil.rmtree(run / "export" / "tflite-int8")  # the export runs again, and fails

    def broken_converter(self, req):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(Tflite, "export", broken_converter)
    result = CliRunner().invoke(
        cli.cli,
        ["compress", "--target", "android", "--out", str(out), "--run-dir", str(run),
         "--epochs", "10", "--distill-epochs", "8"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    bundle.verify(out / "android")  # the good bundle, untouched
    assert json.loads((out / "android" / "report.json").read_text())["ok"]
    failed = json.loads((out / "android.failed" / "report.json").read_text())
    assert not failed["ok"] and "converter crashed" in failed["backends"]["tflite"]["error"]
