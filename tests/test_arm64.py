"""verify-arm64 (issue 11): the android bundle's files run on emulated aarch64.

Slow. The first run on a machine builds the arm64 root (debootstrap and about 2.5 GB of
aarch64 wheels: 4-6 minutes, see docs/ARM64.md); later runs reuse it from
$SLIMSHIP_ARM64_CACHE or ~/.cache/slimship/arm64-root (about 25 s a run). It needs root,
debootstrap and qemu-user-static (.ci/run installs them): without them it fails with the
reason, it does not skip. The fast tests at the end need none of that.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from ground.errors import SlimshipError
from targets import arm64

BINFMT_ENTRY = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def _copy(android_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(android_bundle["bundle"], tmp_path / "android"))


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def _run(bundle: Path):
    return CliRunner().invoke(cli.cli, ["verify-arm64", str(bundle)])


@pytest.mark.slow
def test_verify_arm64_runs_the_android_bundle_on_aarch64(
    android_bundle, tmp_path, every_number_sourced
):
    bundle = _copy(android_bundle, tmp_path)
    binfmt_before = BINFMT_ENTRY.exists()
    result = _run(bundle)
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((bundle / "report.json").read_text())
    a = report["arm64"]
    assert a["state"] == "verified-arm64" and a["ok"] and report["ok"], a["problems"]
    assert a["machine"]["guest_machine"] == "aarch64"
    assert a["machine"]["cpu"] == "cortex-a76" and "asimddp" in a["machine"]["guest_hwcaps"]
    assert a["machine"]["emulator"].startswith("qemu-aarch64")
    # the runtimes are the host's releases; a different build is recorded, not hidden
    for lib in ("executorch", "ai-edge-litert"):
        assert a["versions"][lib] == metadata.version(lib)
    if a["versions"]["torch"] != metadata.version("torch"):
        assert a["versions_differ_from_host"]["torch"]["arm64"] == a["versions"]["torch"]

    for name in ("executorch-xnnpack", "tflite"):
        f = a["files"][name]
        assert f["state"] == "verified-arm64" and not f["problems"], f
        assert f["golden"]["top1_agreement"]["value"] == 1.0
        tol = report["backends"][name]["parity"]["tolerance"]
        assert f["golden"]["identical"] or f["golden"]["sqnr_db"]["value"] >= tol["min_sqnr_db"]
        assert report["backends"][name]["arm64"]["state"] == "verified-arm64"

    pte = a["files"]["executorch-xnnpack"]["delegate"]
    n = lambda d, k: d[k]["value"]  # counted figures
    in_file = sum(f["value"] for f in pte["file_delegates"].values())
    assert pte["xnnpack_available"] and n(pte, "delegate_calls") == in_file
    assert n(pte, "xnnpack_ops_run") > 0
    assert any("Convolution" in k for k in pte["xnnpack_kernels"])
    tfl = a["files"]["tflite"]["delegate"]
    assert n(tfl, "delegate_nodes") >= 1
    assert n(tfl, "delegated_file_nodes") == n(tfl, "host_delegated_nodes")
    every_number_sourced(report)  # the arm64 block too

    # emulated time is never a figure: no latency, no timing of any kind
    assert not [k for k in _keys(a) if "latency" in k or "seconds" in k or k.startswith("p50")]
    # the bundle's manifest still describes its files
    manifest = json.loads((bundle / "manifest.json").read_text())
    for rec in manifest["files"]:
        assert (bundle / rec["path"]).stat().st_size == rec["bytes"], rec["path"]
    # what verify-arm64 mounted or registered on the host is gone again
    assert not arm64._mounts_under(arm64.cache_dir())
    assert BINFMT_ENTRY.exists() == binfmt_before
    assert "verified-arm64" in result.output and "model.pte" in result.output


@pytest.mark.slow
def test_verify_arm64_names_a_corrupted_file(android_bundle, tmp_path):
    bundle = _copy(android_bundle, tmp_path)
    pte = bundle / "model.pte"
    pte.write_bytes(pte.read_bytes()[: pte.stat().st_size // 2])  # truncated in transfer
    result = _run(bundle)
    assert result.exit_code == 1, result.output + repr(result.exception)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert any(ln.startswith("error: model.pte: failed on aarch64") for ln in errors), errors
    assert all("model.pte" in ln for ln in errors), errors  # the intact file is not blamed

    a = json.loads((bundle / "report.json").read_text())["arm64"]
    assert a["state"] == "failed" and a["files"]["executorch-xnnpack"]["state"] == "failed"
    assert a["files"]["tflite"]["state"] == "verified-arm64"


@pytest.mark.slow
def test_verify_arm64_refuses_a_cpu_qemu_does_not_emulate(android_bundle):
    result = CliRunner().invoke(
        cli.cli, ["verify-arm64", str(android_bundle["bundle"]), "--cpu", "cortex-a55"]
    )
    assert (
        result.exit_code == 2 and "available: " in result.output and "cortex-a76" in result.output
    )


def test_verify_arm64_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    result = _run(tmp_path)
    assert result.exit_code == 2 and "no model.json" in result.output, result.output


def test_verify_arm64_without_root_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(arm64.os, "geteuid", lambda: 1000)
    with pytest.raises(SlimshipError, match="needs root"), arm64.machine(tmp_path / "cache"):
        pass
    assert not (tmp_path / "cache").exists()  # nothing prepared, nothing mounted


def test_needed_reads_an_elf_files_libraries(tmp_path):
    # what prunes the CUDA libraries nothing links against: the interpreter links the C library
    assert "libc.so.6" in arm64._needed(Path(os.path.realpath(sys.executable)))
    (tmp_path / "x.so").write_text("INPUT(-lfoo)")  # a linker script, not ELF
    assert arm64._needed(tmp_path / "x.so") == []
