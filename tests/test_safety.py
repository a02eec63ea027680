"""Model files come from strangers: no unpickling unless asked, NaN weights stop the run."""

from __future__ import annotations

import pathlib

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import cli
from ground.errors import UsageError
from models import create_model
from models._user import load_weights


class Evil:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def compress(tmp_path, *args):
    return CliRunner().invoke(
        cli.cli,
        [
            "compress",
            "--target",
            "android",
            "--out",
            str(tmp_path / "out"),
            "--run-dir",
            str(tmp_path / "run"),
            *args,
        ],
    )


@pytest.mark.parametrize("suffix", [".pt", ".pkl"])
def test_a_pickle_that_would_run_code_is_refused_and_never_unpickled(tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"weights{suffix}"
    torch.save({"classifier.weight": torch.zeros(10, 128), "x": Evil(marker)}, evil)
    assert not marker.exists()
    result = compress(tmp_path, "--weights", str(evil))
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: --weights {evil}: refused") and "--trust-pickle" in line
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_trust_pickle_is_explicit_and_recorded(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "w.pkl"
    torch.save({"w": torch.ones(2), "x": Evil(marker)}, evil)
    with pytest.raises(UsageError):
        load_weights(evil)
    assert not marker.exists()
    with pytest.raises(UsageError, match="not a state dict of tensors"):
        load_weights(evil, trust_pickle=True)  # unpickling ran: that is what trust means
    assert marker.exists()


def test_safe_formats_load(tmp_path):
    model = create_model("small_cnn", 1, 10, 8)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors"
    )
    torch.save(model.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        state, how = load_weights(tmp_path / name)
        assert set(state) == set(model.state_dict()) and "pickle" not in how


def test_nan_weights_stop_the_run_naming_the_tensor(tmp_path):
    model = create_model("small_cnn", 1, 10, 8)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["features.1.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    result = compress(tmp_path, "--weights", str(tmp_path / "nan.safetensors"))
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "tensor features.1.0.weight has 1 NaN/Inf" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_user_model_file_and_factory(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text(
        "import torch.nn as nn\n"
        "def build(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    m = create_model(f"{src}:build", 1, 10, 8)
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    result = compress(tmp_path, "--model", f"{src}:nosuch")
    assert result.exit_code == 2 and "has no callable 'nosuch'" in result.output


def test_a_full_disk_is_one_line_and_keeps_the_previous_bundle(
    android_bundle, tmp_path, monkeypatch
):
    import errno
    import os
    import shutil

    from pipeline import rundir

    shutil.copytree(android_bundle["run"], tmp_path / "run")
    shutil.copytree(android_bundle["bundle"], tmp_path / "out" / "android")
    before = (tmp_path / "out" / "android" / "manifest.json").read_bytes()
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while the new bundle's report is written
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".report.html"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(rundir.os, "fsync", fsync)
    result = compress(tmp_path, "--epochs", "10", "--distill-epochs", "8")
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert errors == [
        (
            "error: No space left on device: free space (or fix permissions) and run "
            "again; finished stages and the previous bundle are kept"
        )
    ]
    assert (tmp_path / "out" / "android" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["android"]
