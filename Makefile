# Set-up and the two commands the README starts with. Everything installs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# plain pip: it takes the CPU torch wheel; uv/poetry would fetch a multi-GB CUDA build
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python cli.py compress --target android

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# the benchmarks behind benchmarks/RESULTS.md (not part of `make test`; about 2 hours on 2 cores)
bench: $(STAMP)
	$(BIN)/python benchmarks/compare_recipes.py
	$(BIN)/python benchmarks/distill_quantize.py
	$(BIN)/python benchmarks/prune_speedup.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf dist runs .pytest_cache
