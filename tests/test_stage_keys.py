"""Stage keys are a contract with every run directory on disk: a refactor that changes what a
stage's key is built from makes old runs retrain. tests/data/stage_keys.json holds the key parts
of every stage (without the library versions RunDir.stage adds) as the code wrote them before
the stages were split into modules (issue 23), for the default recipe and a CIFAR-10 one. Changed
on purpose since: prune.min_width (both), and the CIFAR-10 case's distill and fine-tune epochs,
now sized to its 33,300 training images (pipeline/sized_epochs.py), and verify's rules (near-ties
left out of top-1 agreement)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ground.errors import SlimshipError
from pipeline.compress import CompressOptions, compress
from pipeline.rundir import RunDir, StageResult

HELD = json.loads((Path(__file__).parent / "data" / "stage_keys.json").read_text())
CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"

CASES = {
    "default": {"target": "all"},
    "cifar10": {
        "target": "all",
        "model": "resnet20",
        "data": str(CIFAR),
        "seed": 3,
        "overrides": {
            "train.epochs": 20,
            "prune.iterative_steps": 3,
            "prune.importance": "taylor",
            "prune.rewind_epoch": 2,
            "prune.sparsity": 0.3,
            "distill.temperature": 2.0,
            "quantize.qat_epochs": 1,
            "quantize.precision": {"onnx": "fp32"},
        },
    },
}


class _Recorded(SlimshipError):
    """Raised once the last stage's key is recorded: nothing after it needs running."""


def record_keys(opts: CompressOptions, last: str, monkeypatch) -> dict:
    keys = {}

    def stage(self, name, key_parts, fn, *, all_ranks=False):
        keys[name] = json.loads(json.dumps(key_parts, sort_keys=True, default=str))
        if name == last:
            raise _Recorded(name)
        return StageResult(name, self.root / name, {}, f"digest of {name}", False)

    monkeypatch.setattr(RunDir, "stage", stage)
    with pytest.raises(_Recorded):
        compress(opts)
    return keys


@pytest.mark.parametrize("case", sorted(CASES))
def test_stage_keys_unchanged(case, tmp_path, monkeypatch):
    if case == "cifar10" and not CIFAR.is_dir():
        pytest.fail(f"{CIFAR}: the real CIFAR-10 arrays this test reads are missing")
    held = HELD[case]
    opts = CompressOptions(**CASES[case], out=tmp_path / "dist", run_dir=tmp_path / "run")
    assert record_keys(opts, list(held)[-1], monkeypatch) == held
