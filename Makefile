# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo check bench results clean

venv: $(STAMP)

# CPU torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[cpu,dev]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

demo: venv
	$(BIN)/derm demo --work demo

check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(MAKE) test

bench: venv
	$(BIN)/python benchmarks/run_all.py

# docs/RESULTS.md and the README's figures block from the committed benchmarks/results/*.json (no rerun)
results: venv
	$(BIN)/python benchmarks/render_results.py

clean:
	rm -rf $(VENV) demo
