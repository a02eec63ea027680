"""The benchmarks in their --quick modes: each runs its whole path on a small budget and writes
its section (to tmp_path: the committed RESULTS.md comes from full runs). The recipe
comparison (issue 10) runs every contender through prune, fine-tune, int8 .pte, runtime
accuracy and latency, and the pipeline-overhead measurement. Needs ../shared/data/cifar10, as
in CI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, tmp_path: Path, timeout: int) -> str:
    """Run benchmarks/<script> --quick with its work and section under tmp_path; the section."""
    out = tmp_path / "section.md"
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick", "--work", str(tmp_path),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text()


@pytest.mark.slow
def test_compare_recipes_quick_writes_the_whole_table(tmp_path):
    text = run_quick("compare_recipes.py", tmp_path, timeout=1800)
    assert text.startswith("## Recipes against the peers (issue 10)")
    for row in ("dense teacher", "common", "slimship", "scratch", "rewind", "unstructured"):
        assert f"| {row} |" in text, row
    assert "goal >= +0.5" in text and "Goal (overhead <= 1.2x the bare calls)" in text
    r = json.loads((tmp_path / "compare_recipes.json").read_text())
    rows = r["results"][0]["rows"]
    macs0 = r["results"][0]["macs0"]
    for name in ("common", "slimship", "scratch", "rewind"):
        assert rows[name]["macs"] <= 0.4 * macs0 * 1.02, name  # the same 2.5x reduction
    assert rows["unstructured"]["macs"] == macs0  # zeros are still multiplied
    assert rows["unstructured"]["nonzero_params"] < 0.5 * rows["unstructured"]["params"]
    assert rows["scratch"]["params"] == rows["slimship"]["params"] == rows["rewind"]["params"]
    for row in rows.values():
        assert 0 <= row["pte_accuracy"] <= 1 and row["latency"]["runs"] == 10
    for b in r["overhead"]["backends"].values():
        assert b["bare"]["export"] > 0 and b["ratio"] > 0
    # the quick mode never rewrites the committed results
    assert (
        "--quick"
        not in (ROOT / "benchmarks" / "RESULTS.md")
        .read_text()
        .split("## Recipes against the peers (issue 10)")[-1][:300]
    )


@pytest.mark.slow
def test_image_loader_quick_measures_memory_and_both_loaders(tmp_path):
    text = run_quick("image_loader.py", tmp_path, timeout=1200)
    assert text.startswith("## Image folders: memory and loader speed (issue 24)")
    assert "| 200 |" in text and "| 600 |" in text and "smoke run" in text
    res = json.loads((tmp_path / "image_loader.json").read_text())
    assert all(v > 0 for v in res["rss_kib"].values())
    assert res["speed"]["slimship"] > 0 and res["speed"]["torchvision"] > 0


@pytest.mark.slow
def test_augmentation_quick_trains_both_variants_and_tests_on_both_test_sets(tmp_path):
    text = run_quick("augmentation.py", tmp_path, timeout=900)
    assert text.startswith("## Training augmentation on CIFAR-10 (issue 24)")
    res = json.loads((tmp_path / "augmentation.json").read_text())
    assert set(res["variants"]) == {"plain", "augmented"} and res["jpeg_images"] == 500
    for r in res["variants"].values():
        assert 0 <= r["test_jpeg"] <= 1 and 0 <= r["test_npz"] <= 1 and r["train_seconds"] > 0


def test_device_validation_quick_fits_and_validates_the_small_rows(tmp_path):
    """benchmarks/device_validation.py --quick (seconds): the published rows of at most 128 px
    counted, fitted and held out model by model; only --work and --out are written."""
    committed = [ROOT / "targets" / "device_calibration.json", ROOT / "benchmarks" / "RESULTS.md"]
    before = [p.read_bytes() for p in committed]
    text = run_quick("device_validation.py", tmp_path, timeout=600)
    assert text.startswith("## Device estimates against published measurements")
    assert "--quick` (a smoke run" in text and "Every row (estimate = held out" in text
    cal = json.loads((tmp_path / "device_calibration.json").read_text())
    v = cal["validation"]
    assert v["method"] == "leave-one-model-out" and v["all"]["rows"] >= 10
    assert sum(s["rows"] for s in v["by_device"].values()) == v["all"]["rows"]
    rows = json.loads((tmp_path / "device_validation_results.json").read_text())["rows"]
    assert len(rows) == v["all"]["rows"] and all(r["input_size"] <= 128 for r in rows)
    assert all(r["estimate_ms"] > 0 for r in rows)
    assert [p.read_bytes() for p in committed] == before  # a smoke run rewrites nothing


@pytest.mark.slow
def test_photos_224_quick_compresses_a_photo_folder_and_tabulates_the_report(tmp_path):
    text = run_quick("photos_224.py", tmp_path, timeout=1200)
    assert text.startswith("## Photos at 224x224 through compress (issue 24)")
    for row in ("| teacher |", "| distilled |", "| model.pte (int8) |", "| model.tflite (int8) |"):
        assert row in text, row
    assert "smoke run" in text and "--input-size 64" in text


@pytest.mark.slow
def test_prune_library_models_quick_trains_prunes_and_measures_both_accuracies(tmp_path):
    text = run_quick("prune_library_models.py", tmp_path, timeout=600)
    assert text.startswith("## Library architectures pruned to half the MACs (issue 26)")
    assert "`--quick` (a smoke run, not the result)" in text
    res = json.loads((tmp_path / "prune_library_models.json").read_text())
    assert [r["arch"] for r in res["rows"]] == [
        "torchvision:squeezenet1_1",
        "torchvision:mnasnet0_5",
    ]
    for r in res["rows"]:
        assert f"| `{r['arch']}` |" in text
        assert r["outcome"] == "pruned" and r["macs_after"] <= 0.55 * r["macs_before"]
        assert 0 <= r["acc_dense"] <= 1 and 0 <= r["acc_pruned"] <= 1
        no_bn = r["arch"] == "torchvision:squeezenet1_1"  # the one without batch norm
        assert (r["acc_pruned_bn"] is None) == (r["acc_dense_bn"] is None) == no_bn
        assert r["groups"]["verified"] > 0 and r["groups"]["unverified"] == len(r["unverified_why"])
    # a second run resumes from the rows in --work: nothing is trained or pruned again
    rows = sorted((tmp_path / "rows").glob("*.json"))
    kept = [(p.stat().st_mtime_ns, p.read_text()) for p in rows]
    run_quick("prune_library_models.py", tmp_path, timeout=600)
    assert len(rows) == 2 and [(p.stat().st_mtime_ns, p.read_text()) for p in rows] == kept


@pytest.fixture(scope="module")
def latency_quick(tmp_path_factory) -> tuple[str, Path]:
    """latency_target.py --quick, run once: its section and its --work folder."""
    work = tmp_path_factory.mktemp("latency-target")
    return run_quick("latency_target.py", work, timeout=900), work


def test_latency_target_quick_prunes_to_a_latency_and_times_both_programs_side_by_side(
    latency_quick,
):
    text, tmp_path = latency_quick
    assert text.startswith("## Pruning to a latency target (issue 27)")
    assert "| small_cnn | 8 | int8 | 0.7 (0.25) |" in text and "built |" in text
    assert "pruned cases within ±10 % of their target (measured)" in text
    row = json.loads(next((tmp_path / "rows").glob("small_cnn-*-w0.25-v*.json")).read_text())
    side = row["side_by_side"]
    assert side["dense"]["runs"] == side["pruned"]["runs"] == 400 and side["pruned"]["loads"] == 3
    assert row["macs"][1] < row["macs"][0] and row["plan"]["predicted_ms"] > 0
    assert row["plan"]["weighing"] == "macs"  # the default
    assert list((tmp_path / "tables").glob("*.json"))  # the table went to --work's cache


def test_latency_target_quick_prunes_again_weighed_by_divergence_and_times_it_alike(
    latency_quick,
):
    text, tmp_path = latency_quick
    assert "### Speed-up ÷ MAC reduction, steps weighed by MACs or by divergence" in text
    assert "| small_cnn | int8 | 0.7 (0.25) |" in text
    ref = json.loads(next((tmp_path / "rows").glob("*-divergence-v*.json")).read_text())
    assert ref["plan"]["weighing"] == "divergence" and ref["macs"][1] < ref["macs"][0]
    assert ref["side_by_side"]["pruned"]["runs"] == 400


def test_plan_optimality_quick_finds_a_plan_keeping_at_least_the_planners_macs_in_budget(
    latency_quick, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLIMSHIP_LATENCY_CACHE", str(latency_quick[1] / "tables"))  # reused
    text = run_quick("plan_optimality.py", tmp_path, timeout=600)
    assert text.startswith("## The latency planner against the best plan its table allows")
    assert "| small_cnn | int8 | 0.7 (0.25) |" in text
    row = json.loads(next((tmp_path / "rows").glob("optimal-small_cnn-*.json")).read_text())
    assert max(row["planner"]["predicted"], row["best"]["predicted"]) <= 0.7 + 1e-9
    assert row["best"]["macs_kept"] >= row["planner"]["macs_kept"]


def test_the_best_plan_is_the_exhaustive_optimum_with_blocks_and_a_block_limit():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plan_optimality import best_plan

    from pipeline.prune.widths import _Analysis, _Group, predicted_cost

    groups = [_Group("stage", 4, [4, 3, 2, 1]), _Group("b1.conv1", 4, [4, 2]),
              _Group("b2.conv1", 4, [4, 2]), _Group("b1", 1, [1, 0], block=True),
              _Group("b2", 1, [1, 0], block=True)]  # fmt: skip
    lat = _Analysis(groups, [(1.0, (0,)), (2.0, (0, 1, 3)), (0.5, (3,)), (1.5, (0, 2, 4)),
                             (0.7, (4,))], 0.3, [], max_blocks=1)  # fmt: skip
    macs = _Analysis(groups, [(1.0, (0,)), (3.0, (0, 1, 3)), (2.0, (0, 2, 4))], 0.0, [])
    plans = [dict(enumerate(c)) for c in itertools.product(*[g.choices for g in groups])]
    plans = [p for p in plans if (p[3] == 0) + (p[4] == 0) <= 1]
    for budget in (5.5, 3.0, 2.2, 1.4):
        fits = [predicted_cost(macs, p) for p in plans if predicted_cost(lat, p) <= budget]
        best = best_plan(lat, macs, budget)
        assert predicted_cost(lat, best) <= budget
        assert predicted_cost(macs, best) == pytest.approx(max(fits)), budget


def test_latency_accuracy_quick_matches_four_contenders_to_one_latency_and_tests_each(tmp_path):
    text = run_quick("latency_accuracy.py", tmp_path, timeout=900)
    assert text.startswith("## Accuracy at equal latency")
    contenders = (
        "latency-targeted",
        "latency-targeted, weighed by divergence",
        "MAC-targeted",
        "torch-pruning uniform",
    )
    for row in ("dense teacher", *contenders):
        assert f"| {row} |" in text, row
    res = json.loads((tmp_path / "latency_accuracy.json").read_text())
    assert set(res["timing"]) == {"dense", *contenders}
    assert all(r["macs"] < res["macs_dense"] for r in res["rows"].values())
    assert "Latency-targeted minus MAC-targeted" in text
