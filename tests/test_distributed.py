"""The training stages under torch.distributed: 2 gloo ranks on this CPU (issue 9).

The slow tests start real worker processes (`compress --nproc 2`, or torchrun for the weights
check); the fast ones check the pieces that decide what a failure looks like."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

import cli
from ground import faults
from ground.errors import SlimshipError
from pipeline import distributed
from pipeline.rundir import sha256_file
from pipeline.train import _sharded_order

REPO = Path(__file__).resolve().parents[1]
EPOCHS = ["--epochs", "10", "--distill-epochs", "8"]  # the android_bundle fixture's settings


def compress(tmp_path, *args, kill_at=""):
    env = {**os.environ, "SLIMSHIP_KILL_AT": kill_at}
    env.pop("OMP_NUM_THREADS", None)  # the launcher gives each of the 2 workers 1 thread
    return subprocess.run(
        [
            sys.executable,
            "cli.py",
            "compress",
            "--target",
            "android",
            "--nproc",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--run-dir",
            str(tmp_path / "run"),
            *EPOCHS,
            *args,
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
def ddp_bundle(tmp_path_factory):
    """The default compress with 2 gloo ranks, the android_bundle fixture's epochs and seed."""
    root = tmp_path_factory.mktemp("ddp")
    result = compress(root)
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        "root": root,
        "result": result,
        "report": json.loads((root / "out" / "android" / "report.json").read_text()),
    }


@pytest.mark.slow
def test_two_ranks_compress_matches_the_single_process_run(ddp_bundle, android_bundle):
    log = ddp_bundle["result"].stderr
    assert "starting 2 training processes" in log and "gloo" in log
    # only rank 0 speaks: each stage's line once
    assert log.count("[train] teacher accuracy") == 1
    assert log.count("[distill] student accuracy") == 1
    out = ddp_bundle["root"] / "out"
    assert [p.name for p in out.iterdir()] == ["android"]  # one bundle, nothing partial
    bundle = out / "android"
    manifest = json.loads((bundle / "manifest.json").read_text())
    for f in manifest["files"]:
        assert sha256_file(bundle / f["path"]) == f["sha256"]
    report = ddp_bundle["report"]
    assert report["ok"], report["problems"]
    single = json.loads((android_bundle["bundle"] / "report.json").read_text())
    assert report["seed"] == single["seed"] and report["recipe"] == single["recipe"]
    for stage in ("teacher", "distilled"):
        two = report["stages"][stage]["accuracy"]["value"]
        one = single["stages"][stage]["accuracy"]["value"]
        assert abs(two - one) <= 0.015, (stage, two, one)
    # rank 0 alone exported: the files are verified as in a single process
    for b in report["backends"].values():
        assert b["parity"]["state"] == "verified"


@pytest.mark.slow
def test_ranks_hold_identical_weights_after_pruning_and_fine_tuning(tmp_path):
    """Each rank hashes its own state dict after training (from different initial weights),
    after pruning (the stage's broadcast result, and the plan replayed on the rank's own
    teacher) and after one epoch of DDP fine-tuning, before any of rank 0's files arrive."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "tests" / "ddp_weights.py"),
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    digests = json.loads((tmp_path / "digests.json").read_text())
    assert len(set(digests.pop("initial"))) == 2  # the ranks really started apart
    assert list(digests) == [
        "trained",
        "pruned (stage result)",
        "pruned (plan replayed on this rank)",
        "fine-tuned one epoch",
    ]
    for step, per_rank in digests.items():
        assert len(per_rank) == 2 and per_rank[0] == per_rank[1], step
    assert digests["trained"][0] != digests["pruned (stage result)"][0]
    assert digests["pruned (stage result)"][0] != digests["fine-tuned one epoch"][0]


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_naming_it_and_a_rerun_resumes(tmp_path, ddp_bundle):
    first = compress(tmp_path, kill_at="distill student:epoch3@rank1")
    assert first.returncode == 1, first.stderr[-2000:]
    assert re.search(
        r"error: rank 1 died \(signal SIGKILL\) during distill; finished stages are "
        r"kept, run again to resume\n$",
        first.stderr,
    ), first.stderr[-2000:]
    assert not (tmp_path / "out" / "android").exists()
    second = compress(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("train", "prune"):
        assert f"[{stage}] reused" in second.stderr, stage
    assert "[distill] reused" not in second.stderr
    resumed = json.loads((tmp_path / "out" / "android" / "report.json").read_text())
    assert figures(resumed) == figures(ddp_bundle["report"])  # same as the uninterrupted run


def test_a_kill_point_can_target_one_rank(monkeypatch):
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(sig))
    monkeypatch.setenv("SLIMSHIP_KILL_AT", "distill student:epoch2@rank1")
    monkeypatch.setenv("RANK", "0")
    faults.point("distill student:epoch2")
    assert killed == []
    monkeypatch.setenv("RANK", "1")
    faults.point("distill student:epoch1")
    faults.point("distill student:epoch2")
    assert killed == [signal.SIGKILL]
    monkeypatch.setenv("SLIMSHIP_KILL_AT", "export:tflite")  # no rank: every process
    monkeypatch.setenv("RANK", "0")
    faults.point("export:tflite")
    assert killed == [signal.SIGKILL] * 2


@pytest.mark.parametrize("n", [1293, 8, 7])
def test_each_epoch_is_split_between_ranks_like_distributed_sampler(monkeypatch, n):
    orders = {}
    for r in (0, 1):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        order = _sharded_order(n, seed=3)
        orders[r] = [order(e).tolist() for e in range(3)]
    for e in range(3):
        a, b = orders[0][e], orders[1][e]
        assert len(a) == len(b) == -(-n // 2)  # padded: both ranks take the same steps
        assert set(a) | set(b) == set(range(n))
    assert orders[0][0] != orders[0][1]  # a new order each epoch, seeded by seed + epoch
    g = torch.Generator().manual_seed(3 + 1)
    assert orders[0][1] == (torch.randperm(n, generator=g).tolist() * 2)[: 2 * -(-n // 2)][0::2]


def failure(exitcode: int, rank: int) -> ProcessFailure:
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="")


def test_a_dead_rank_is_named_with_its_signal_and_stage():
    failures = {0: failure(-signal.SIGTERM, 0), 1: failure(-signal.SIGKILL, 1)}
    status = {0: {"stage": "distill"}, 1: {"stage": "distill"}}
    with pytest.raises(
        SlimshipError,
        match=r"^rank 1 died \(signal SIGKILL\) during distill; "
        r"finished stages are kept, run again to resume$",
    ):
        distributed.explain_failure(failures, status)
    # the survivors the launcher stopped with SIGTERM are not the cause; a rank that lost
    # its peer is not either
    failures = {0: failure(1, 0), 1: failure(-signal.SIGTERM, 1)}
    status = {
        0: {"stage": "prune", "error": "lost contact", "lost_rank": True},
        1: {"stage": "prune"},
    }
    with pytest.raises(SlimshipError, match=r"^rank 1 died \(signal SIGTERM\) during prune"):
        distributed.explain_failure(failures, status)


def test_a_ranks_own_error_keeps_its_exit_code(capsys):
    # rank 0 printed its own one-line error: the launcher only passes its exit code on
    status = {
        0: {"stage": "train", "error": "--data x: no such file", "exit_code": 2},
        1: {"stage": "train", "error": "--data x: no such file", "exit_code": 2},
    }
    assert distributed.explain_failure({0: failure(2, 0), 1: failure(2, 1)}, status) == 2
    assert capsys.readouterr().err == ""
    # another rank's error is printed by the launcher, once, naming the rank
    status = {
        1: {"stage": "train", "error": "train: tensor x has 3 NaN/Inf values", "exit_code": 1},
        0: {"stage": "train", "error": "lost", "lost_rank": True},
    }
    assert distributed.explain_failure({0: failure(1, 0), 1: failure(1, 1)}, status) == 1
    assert capsys.readouterr().err == "error: rank 1: train: tensor x has 3 NaN/Inf values\n"
    # a crash without a message of its own (a Python traceback above it)
    with pytest.raises(
        SlimshipError,
        match=r"^rank 1 failed \(exit code 1\) during train; its "
        r"output above says why",
    ):
        distributed.explain_failure({1: failure(1, 1)}, {1: {"stage": "train"}})


def test_nproc_under_torchrun_is_a_one_line_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(
        cli.cli,
        [
            "compress",
            "--target",
            "android",
            "--nproc",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--run-dir",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        (
            "error: --nproc: already running under torchrun (WORLD_SIZE is set); leave --nproc at 1 "
            "and let torchrun start the workers"
        )
    ]
    assert not (tmp_path / "run").exists()
