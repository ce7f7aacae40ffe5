# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv itself; torch comes from the pinned CPU wheel before anything can pull CUDA.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saelab-installed
DEMO_OUT ?= runs/demo

.PHONY: demo demo-quick test test-torch-kernels test-slow test-demo test-compat test-lower-bounds bench install clean lint docs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,lm,docs]"
	$(BIN)/python -m saelab.kernels.native
	@if $(BIN)/pip list 2>/dev/null | grep -qi '^nvidia-'; then echo "CUDA packages were pulled in; refusing" >&2; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/saelab demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(BIN)/saelab demo --quick --out $(DEMO_OUT)-quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The sparse kernels on torch's operators alone, as on a machine without a C++ compiler.
test-torch-kernels: $(STAMP)
	SAELAB_NATIVE=0 $(BIN)/python -m pytest -q tests/kernels tests/training/test_sharded.py

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --hypothesis-profile=long

test-demo: $(STAMP)
	$(BIN)/python -m pytest -q -m demo

test-lower-bounds: $(STAMP)
	bash scripts/check_lower_bounds.sh

test-compat: $(STAMP)
	bash scripts/setup_saelens_venv.sh
	bash scripts/setup_saebench_venv.sh
	$(BIN)/python -m pytest -q -m compat

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts docs/hooks
	$(BIN)/ruff format --check src tests bench scripts docs/hooks

# The documentation site, offline; --strict fails on a broken link or a page missing from the nav.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) .venv-saelens runs build .pytest_cache .hypothesis
