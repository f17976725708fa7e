# Everything a fresh machine needs: `make demo` runs the main job on generated data, `make test` the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]" -c constraints/cpu.txt
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

demo: $(VENV)/.installed
	$(BIN)/megabench demo --out runs/demo

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/verification.py
	$(BIN)/python benchmarks/megaface.py
	$(BIN)/python benchmarks/attention_cost.py

.PHONY: install test demo bench
