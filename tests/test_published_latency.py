"""targets/published_latency.yaml: published on-device latencies, every row complete and sourced."""

import math
import re
from pathlib import Path

import pytest
import yaml

PATH = Path(__file__).resolve().parent.parent / "targets" / "published_latency.yaml"

REQUIRED = {
    "model",
    "input_size",
    "precision",
    "runtime",
    "delegate",
    "device",
    "soc",
    "threads",
    "batch",
    "ms",
    "source",
}
OPTIONAL = {"note"}
TEXT_FIELDS = ("model", "runtime", "delegate", "device", "soc", "source")
PRECISIONS = {"fp32", "fp16", "int8"}
URL = re.compile(r"https?://\S+")
PAPER_TABLE = re.compile(r"\b(?:Table|Tab\.)\s*\d+")


@pytest.fixture(scope="module")
def data():
    return yaml.safe_load(PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rows(data):
    return data["rows"]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def test_file_is_a_mapping_with_a_list_of_row_mappings(data):
    assert isinstance(data, dict)
    assert isinstance(data["rows"], list)
    assert all(isinstance(row, dict) for row in data["rows"])


def test_every_row_has_every_required_field(rows):
    missing = [(i, sorted(REQUIRED - row.keys())) for i, row in enumerate(rows)]
    assert [m for m in missing if m[1]] == []


def test_no_row_has_an_unknown_field(rows):
    unknown = [(i, sorted(row.keys() - REQUIRED - OPTIONAL)) for i, row in enumerate(rows)]
    assert [u for u in unknown if u[1]] == []


def test_text_fields_are_non_empty_strings(rows):
    bad = [
        (i, field)
        for i, row in enumerate(rows)
        for field in TEXT_FIELDS
        if not (isinstance(row[field], str) and row[field].strip())
    ]
    assert bad == []


def test_note_when_present_is_a_non_empty_string(rows):
    bad = [i for i, row in enumerate(rows) if "note" in row and not str(row["note"] or "").strip()]
    assert bad == []


def test_input_size_is_a_positive_int(rows):
    bad = [
        i
        for i, row in enumerate(rows)
        if not (_is_int(row["input_size"]) and row["input_size"] > 0)
    ]
    assert bad == []


def test_precision_is_fp32_fp16_or_int8(rows):
    assert [i for i, row in enumerate(rows) if row["precision"] not in PRECISIONS] == []


def test_threads_is_a_positive_int_or_null(rows):
    bad = [
        i
        for i, row in enumerate(rows)
        if row["threads"] is not None and not (_is_int(row["threads"]) and row["threads"] > 0)
    ]
    assert bad == []


def test_batch_is_a_positive_int(rows):
    assert [
        i for i, row in enumerate(rows) if not (_is_int(row["batch"]) and row["batch"] > 0)
    ] == []


def test_ms_is_a_positive_finite_float(rows):
    bad = [
        i
        for i, row in enumerate(rows)
        if not (isinstance(row["ms"], float) and math.isfinite(row["ms"]) and row["ms"] > 0)
    ]
    assert bad == []


def test_source_contains_a_url_or_names_a_paper_table(rows):
    bad = [
        i
        for i, row in enumerate(rows)
        if not (URL.search(row["source"]) or PAPER_TABLE.search(row["source"]))
    ]
    assert bad == []


def test_there_are_at_least_25_rows(rows):
    assert len(rows) >= 25


def test_rows_cover_at_least_4_devices(rows):
    assert len({row["device"] for row in rows}) >= 4
