# The front door: `make run` (default suite on every backend available here) and `make test`.
# Both set themselves up from nothing, from the lock: a virtual environment with exactly the versions that were
# tested (requirements.lock), torch pinned to the CPU build, and this package on top without touching them.
PYTHON ?= python3
VENV ?= .venv
# CPU machines: pin torch so pip takes the CPU build instead of a multi-GB CUDA one.
# On a machine whose Python already has the torch it wants: make TORCH_SPEC= run (the venv then sees it).
TORCH_SPEC ?= torch==2.13.0
SUITE ?= smoke
LOCK := requirements.lock
BIN := $(VENV)/bin
STAMP := $(VENV)/.harness-installed
VENV_FLAGS := $(if $(TORCH_SPEC),,--system-site-packages)
LATEST := .venv-latest

.PHONY: setup run test lint lock test-latest clean

setup: $(STAMP)

# The lock pins pip, setuptools and wheel too; the package builds without isolation, so nothing newer sneaks in.
$(STAMP): pyproject.toml faults/pyproject.toml $(LOCK) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$$(grep '^pip==' $(LOCK))"
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) -r $(LOCK)
	@# The distribution was named harness before it became infer-parity-harness: its metadata (in the venv, or an
	@# egg-info left in the checkout) would register every backend twice.
	$(BIN)/python -m pip uninstall --quiet --yes harness 2>/dev/null || true
	rm -rf harness.egg-info
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e faults/  # the faults harness selftest runs
	$(BIN)/python -m pip check
	touch $@

run: $(STAMP)
	$(BIN)/harness run --suite $(SUITE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

# Refresh the lock: the newest versions pyproject allows, resolved in a throwaway venv (torch as TORCH_SPEC).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	.venv-lock/bin/python -m pip install --quiet $(TORCH_SPEC) -e '.[test]'
	.venv-lock/bin/python -m pip check
	{ echo "# Exact versions of everything make run / make test / .ci/run install (torch comes from TORCH_SPEC)."; \
	  echo "# Made by 'make lock' on $$(date -u +%Y-%m-%d), Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version(), platform.machine())'), with $$(.venv-lock/bin/python -m pip freeze | grep '^torch==')."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^torch=='; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK); run make test to check it"

# Upstream drift, seen before users see it: the newest versions pyproject allows, then the whole test suite.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager $(TORCH_SPEC) -e '.[test]'
	$(LATEST)/bin/python -m pip check
	@grep -v '^#' $(LOCK) > $(LATEST)/locked.txt
	@$(LATEST)/bin/python -m pip freeze --all --exclude-editable | grep -v '^torch==' > $(LATEST)/newest.txt
	@echo "newest allowed versions against the lock (< locked, > newest):"
	@diff $(LATEST)/locked.txt $(LATEST)/newest.txt && echo "  none: the lock is current" || true
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock .pytest_cache .ruff_cache build *.egg-info
