"""compress runs iterative pruning (cubic schedule), lottery-ticket rewinding and unstructured
sparsity from the recipe/CLI, and the report shows what unstructured zeros buy (a smaller
compressed download) and what they do not (the file's own size)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

import cli

ARGS = ["--epochs", "6", "--distill-epochs", "4"]


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
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
            *ARGS,
            "--iterative-steps",
            "3",
            "--rewind-epoch",
            "0",
            "--sparsity",
            "0.6",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root, result.output


@pytest.mark.slow
def test_iterative_rewound_sparse_run_is_verified_and_keeps_its_zeros(
    sparse_run, every_number_sourced
):
    root, output = sparse_run
    assert "3 steps on a cubic schedule" in output and "rewound to initialisation" in output
    report = json.loads((root / "dist" / "android" / "report.json").read_text())
    pruned, distilled = report["stages"]["pruned"], report["stages"]["distilled"]
    assert pruned["rewound_to"] == "initialisation"
    assert distilled["macs"]["value"] <= 0.5 * report["stages"]["teacher"]["macs"]["value"]
    # the zeros chosen at pruning survive fine-tuning (the masks are held while training)
    assert pruned["unstructured"]["sparsity"]["value"] == pytest.approx(0.6, abs=0.01)
    assert distilled["unstructured"]["sparsity"]["value"] >= 0.6 - 0.01
    plan = json.loads((root / "run" / "prune" / "model.json").read_text())["plan"]
    assert len(plan["steps"]) == 3 and plan["schedule"].startswith("cubic")
    assert plan["steps"][0]["kept_fraction_goal"] > plan["steps"][-1]["kept_fraction_goal"]
    for name in ("executorch-xnnpack", "tflite"):
        assert report["backends"][name]["parity"]["state"] == "verified", name
    assert distilled["accuracy"]["value"] >= 0.9
    every_number_sourced(report)


@pytest.mark.slow
def test_rewound_survivors_hold_their_initial_values(sparse_run):
    """Where the mask kept a weight, the pruned stage's weight is the initial one."""
    root, _ = sparse_run
    init = load_file(str(root / "run" / "train" / "init.safetensors"))
    pruned = load_file(str(root / "run" / "prune" / "model.safetensors"))
    first = next(k for k in pruned if k.endswith("weight") and pruned[k].dim() == 4)
    w, w0 = pruned[first], init[first]
    assert w.shape[1] == w0.shape[1]  # the first conv keeps its input channels
    kept = w != 0
    assert kept.any() and (~kept).any()
    # survivors equal some output channel of the initial tensor, element for element
    rows = {tuple(r.flatten().tolist()) for r in w0}
    for r, m in zip(w, kept):
        full = tuple(r.flatten().tolist())
        match = [
            c
            for c in rows
            if all(a == b or not k for a, b, k in zip(full, c, m.flatten().tolist()))
        ]
        assert match, "a surviving channel is not an initial channel"


@pytest.mark.slow
def test_unstructured_zeros_buy_compression_not_file_size(sparse_run, android_bundle):
    root, _ = sparse_run
    sparse = json.loads((root / "dist" / "android" / "report.json").read_text())
    dense = json.loads((android_bundle["bundle"] / "report.json").read_text())
    params = [r["stages"]["distilled"]["params"]["value"] for r in (sparse, dense)]
    for name in ("executorch-xnnpack", "tflite"):
        s, d = sparse["backends"][name], dense["backends"][name]
        assert s["bytes_compressed"]["source"] == "counted"
        # a file holds every weight, zero or not (bytes per parameter as in the dense run);
        # the zeros compress away
        assert s["bytes"]["value"] / params[0] == pytest.approx(
            d["bytes"]["value"] / params[1], rel=0.1
        ), name
        assert (
            s["bytes_compressed"]["value"] / s["bytes"]["value"]
            < 0.85 * d["bytes_compressed"]["value"] / d["bytes"]["value"]
        ), name


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--rewind-epoch", "9", "--epochs", "3"], r"^error: recipe key prune.rewind_epoch is 9"),
        (["--sparsity", "1.5"], r"^error: recipe key prune.sparsity must be in \[0, 1\)"),
        (["--iterative-steps", "0"], r"^error: recipe key prune.iterative_steps must be > 0"),
        (["--set", "prune.scope"], r"^error: --set prune.scope: expected section.key=value"),
        (["--set", "prune.nosuch=1"], r"^error: recipe key prune.nosuch is unknown"),
    ],
)
def test_bad_prune_options_exit_2_naming_the_key(tmp_path, args, pattern):
    import re

    result = CliRunner().invoke(
        cli.cli,
        [
            "compress",
            "--target",
            "android",
            *args,
            "--out",
            str(tmp_path / "out"),
            "--run-dir",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.match(pattern, lines[0]), result.output
    assert not (tmp_path / "out").exists()


def test_set_overrides_any_recipe_key():
    from pipeline.config import load_recipe, parse_setting

    r = load_recipe(
        None, dict([parse_setting("prune.scope=global"), parse_setting("profile.threads=[1, 2]")])
    )
    assert r.prune.scope == "global" and r.profile.threads == (1, 2)


@pytest.mark.slow
def test_rewinding_a_loaded_teacher_is_refused(sparse_run, tmp_path):
    """--weights skips training, so there are no initial weights to rewind to."""
    root, _ = sparse_run
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
            "--weights",
            str(root / "run" / "train" / "model.safetensors"),
            "--rewind-epoch",
            "0",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "prune.rewind_epoch: the train stage kept no weights" in result.output
    assert not (tmp_path / "out").exists()
