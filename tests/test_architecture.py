"""docs/ARCHITECTURE.md names the real stages and backends, and imports run one way
(cli -> pipeline -> targets/models -> ground)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from targets import get_backend, list_backends

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def _rows(first_header: str) -> list[list[str]]:
    """The cells of the markdown table whose header starts with `| first_header |`."""
    lines = DOC.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def _module(path: str):
    return importlib.import_module(path.removesuffix(".py").replace("/", "."))


def test_every_stage_in_the_doc_is_a_module_with_that_name():
    for stage, module, *_ in _rows("stage"):
        mod = _module(module.strip("`"))
        assert stage.strip("`").split("/")[0].split(" ")[0] == mod.NAME, (stage, module)


def test_every_stage_module_is_in_the_doc():
    named = {row[1].strip("`") for row in _rows("stage")}
    for path in (ROOT / "pipeline" / "stages").glob("[!_]*.py"):
        assert str(path.relative_to(ROOT)) in named, path


def test_the_doc_names_every_backend_with_its_module_and_file():
    rows = _rows("backend")
    assert sorted(r[0].strip("`") for r in rows) == list_backends()
    for name, module, filename in rows:
        backend = get_backend(name.strip("`"))
        assert type(backend).__module__ == _module(module.strip("`")).__name__
        assert backend.filename == filename


def test_every_path_the_doc_names_exists():
    for path in re.findall(r"`((?:pipeline|targets|models|ground|tests)/[\w/.]+)`", DOC):
        assert (ROOT / path).exists(), path


def _imported_packages(package: str) -> set[tuple[str, str]]:
    """(file, top-level package) for every import in the files of one package."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((path.name, node.module.split(".")[0]))
            elif isinstance(node, ast.Import):
                found |= {(path.name, a.name.split(".")[0]) for a in node.names}
    return found


def test_imports_run_one_way():
    above = {
        "ground": {"pipeline", "targets", "models", "cli"},
        "targets": {"pipeline", "cli"},
        "models": {"pipeline", "cli"},
        "pipeline": {"cli"},
    }
    for package, forbidden in above.items():
        wrong = sorted(f for f in _imported_packages(package) if f[1] in forbidden)
        assert not wrong, f"{package}/ imports from above it: {wrong}"


def test_pipeline_modules_functions_and_classes_stay_small():
    """Issue 23's budget: modules <= 400 lines, functions <= 60, classes <= 200; compress is a
    composition of stages (<= 150 lines)."""
    over = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        src = path.read_text()
        if src.count("\n") > 400:
            over.append(f"{path.name}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            limit = {ast.FunctionDef: 60, ast.AsyncFunctionDef: 60, ast.ClassDef: 200}.get(
                type(node)
            )
            if limit and node.end_lineno - node.lineno + 1 > limit:
                over.append(f"{path.name}:{node.lineno} {node.name}")
    assert not over, over
    assert (ROOT / "pipeline" / "compress.py").read_text().count("\n") <= 150


BACKEND_WORDS = re.compile(
    r"executorch-xnnpack|[\"'](tflite|coreml|onnx)[\"']|"
    r"^\s*(import|from)\s+(executorch|litert_torch|coremltools|onnxruntime)\b",
    re.MULTILINE,
)


def test_pipeline_names_no_backend_and_imports_no_runtime():
    found = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        found += [f"{path.name}: {m.group(0)}" for m in BACKEND_WORDS.finditer(path.read_text())]
    assert not found, found
