"""Budgets turn into exit codes: 0 all hold, 1 any broken (naming the line), 2 bad input."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

import cli

HOLDS = """
target: android
budgets:
  - backend: "*"
    max_file_bytes: 4000000
    max_latency_ms: 15
    max_accuracy_drop_points: 3
    min_top1_agreement: 0.97
    min_sqnr_db: 25
    min_delegated_fraction: 0.9
"""


def gate(tmp_path, report, budget_text, *extra):
    budget = tmp_path / "budget.yaml"
    budget.write_text(budget_text)
    return CliRunner().invoke(cli.cli, ["gate", str(report), "--budget", str(budget), *extra])


@pytest.fixture
def report(android_bundle):
    return android_bundle["bundle"] / "report.json"


def test_a_budget_that_holds_exits_0_and_writes_junit_and_json(report, tmp_path):
    junit, js = tmp_path / "gate.xml", tmp_path / "gate.json"
    result = gate(tmp_path, report, HOLDS, "--junit", str(junit), "--json", str(js))
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "PASS" in result.output
    suite = ET.parse(junit).getroot()
    cases = suite.findall("testcase")
    assert len(cases) == 2 * 6 and suite.get("failures") == "0"  # 2 backends x 6 limits
    assert json.loads(js.read_text())["ok"] is True


@pytest.mark.parametrize(
    "line",
    [
        "max_file_bytes: 1000",
        "max_latency_ms: 0.000001",
        "max_accuracy_drop_points: -50",
        "min_top1_agreement: 1.5",
        "min_sqnr_db: 500",
        "min_delegated_fraction: 1.5",
        "max_peak_rss_bytes: 1",
        "{max_latency_ms: 15, latency_on: nosuch-device}",
    ],
)
def test_each_broken_budget_exits_1_naming_the_line(report, tmp_path, line):
    text = (
        f"budgets:\n  - backend: executorch-xnnpack\n    {line}\n"
        if not line.startswith("{")
        else f"budgets:\n  - {{backend: executorch-xnnpack, {line[1:-1]}}}\n"
    )
    junit = tmp_path / "gate.xml"
    result = gate(tmp_path, report, text, "--junit", str(junit))
    assert result.exit_code == 1, result.output
    key = line.strip("{}").split(":")[0]
    failing = [ln for ln in result.output.splitlines() if "FAIL" in ln]
    assert len(failing) == 1 and f"budgets[0] executorch-xnnpack {key}" in failing[0]
    failures = ET.parse(junit).getroot().findall("testcase/failure")
    assert len(failures) == 1 and failures[0].get("message")


@pytest.mark.parametrize(
    "text, key",
    [
        ("budgets:\n  - {backend: tflite, max_file_byte: 10}\n", "budgets[0].max_file_byte"),
        ("budgets:\n  - {backend: tflite, max_file_bytes: big}\n", "budgets[0].max_file_bytes"),
        ("budgets:\n  - {backend: tflite, latency_stat: p99, max_latency_ms: 1}\n", "latency_stat"),
        ("budgets:\n  - {backend: tflite}\n", "sets no limit"),
        ("budgets: []\n", "at least one budget"),
        ("budget: []\n", "budget key budget is unknown"),
        ("- 1\n", "must be a mapping"),
        ("budgets: [1\n", "not valid YAML"),
    ],
)
def test_a_malformed_budget_file_exits_2_naming_the_key(report, tmp_path, text, key):
    result = gate(tmp_path, report, text)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], result.output


def test_a_bad_report_exits_2(tmp_path):
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    assert gate(tmp_path, bad, HOLDS).exit_code == 2


def test_baseline_deltas_and_a_regression_fails(report, tmp_path):
    base = json.loads(report.read_text())
    for b in base["backends"].values():
        b["bytes"]["value"] = int(b["bytes"]["value"] / 2)  # the old files were half the size
    old = tmp_path / "old.json"
    old.write_text(json.dumps(base))
    text = "max_regression_percent: 10\nbudgets:\n  - {max_file_bytes: 4000000}\n"
    result = gate(tmp_path, report, text, "--baseline", str(old))
    assert result.exit_code == 1 and "+100.0%" in result.output
    assert "regressed 100.0% against the baseline" in result.output
    same = gate(tmp_path, report, text, "--baseline", str(report))
    assert same.exit_code == 0 and "+0.0%" in same.output


def test_compress_with_a_budget(android_bundle, tmp_path, every_number_sourced):
    shutil.copytree(android_bundle["run"], tmp_path / "run")
    budget = tmp_path / "b.yaml"
    budget.write_text("budgets:\n  - {max_file_bytes: 1000}\n")
    result = CliRunner().invoke(
        cli.cli,
        [
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
            "--budget",
            str(budget),
        ],
    )
    assert result.exit_code == 1
    assert "error: budget broken: budgets[0] executorch-xnnpack max_file_bytes" in result.output
    report = json.loads((tmp_path / "out" / "android" / "report.json").read_text())
    assert [ln["verdict"] for ln in report["gate"]] == ["fail", "fail"]
    assert {ln["unit"] for ln in report["gate"]} == {"bytes"}
    every_number_sourced(report)  # the gate's lines too
    assert "Budgets" in (tmp_path / "out" / "android" / "report.html").read_text()
