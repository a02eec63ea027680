"""Property-based: malformed recipes, budgets and manifests always give a clear error (or are
ignored and rebuilt, for a run manifest), never a traceback or a hang."""

from __future__ import annotations

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ground.errors import UsageError
from pipeline.config import Recipe, load_recipe
from pipeline.gate import Budgets, load_budgets
from pipeline.rundir import RunDir, write_bytes

KEYS = [
    "train",
    "prune",
    "distill",
    "quantize",
    "profile",
    "epochs",
    "lr",
    "alpha",
    "temperature",
    "importance",
    "macs_fraction",
    "budgets",
    "backend",
    "max_file_bytes",
    "min_sqnr_db",
    "latency_stat",
    "target",
    "threads",
    "ignored_layers",
    "x",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.sampled_from(KEYS), c, max_size=4)
    ),
    max_leaves=12,
)
documents = st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(doc=documents)
def test_any_recipe_loads_or_fails_with_a_usage_error(tmp_path, doc):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(doc))
    try:
        assert isinstance(load_recipe(p), Recipe)
    except UsageError as e:
        assert str(e) and "\n" not in str(e)


@FAST
@given(doc=documents)
def test_any_budget_file_loads_or_fails_with_a_usage_error(tmp_path, doc):
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump(doc))
    try:
        assert isinstance(load_budgets(p), Budgets)
    except UsageError as e:
        assert str(e) and "\n" not in str(e)


@FAST
@given(text=st.one_of(st.text(max_size=40), documents.map(json.dumps)))
def test_any_run_manifest_is_verified_or_rebuilt(tmp_path, text):
    root = tmp_path / "run"
    root.mkdir(exist_ok=True)
    (root / "manifest.json").write_text(text)
    ran = []

    def body(folder):
        ran.append(1)
        write_bytes(folder / "a.txt", b"x")
        return {}

    result = RunDir(root).stage("s", {"config": 1}, body)
    assert ran and not result.reused  # a malformed manifest is never trusted


def test_a_manifest_pointing_outside_the_run_is_not_trusted(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    root = tmp_path / "run"
    run = RunDir(root)
    run.stage("s", {"config": 1}, lambda f: write_bytes(f / "a.txt", b"x") or {})
    m = json.loads((root / "manifest.json").read_text())
    m["stages"]["s"]["files"] = [{"path": "../secret.txt", "sha256": "0", "bytes": 1}]
    (root / "manifest.json").write_text(json.dumps(m))
    assert not RunDir(root).stage("s", {"config": 1}, lambda f: {}).reused
