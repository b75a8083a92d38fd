# The front door: `make run` (default suite on every backend available here) and `make test`.
# Both set themselves up from nothing: a virtual environment, torch pinned to the CPU build, the package.
PYTHON ?= python3
VENV ?= .venv
# CPU machines: pin torch so pip takes the CPU build instead of a multi-GB CUDA one.
# On a GPU machine with torch already installed: make TORCH_SPEC= run
TORCH_SPEC ?= torch==2.13.0
SUITE ?= smoke
BIN := $(VENV)/bin
STAMP := $(VENV)/.harness-installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/harness run --suite $(SUITE)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
