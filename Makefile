# `make quickstart`, `make test` and `make test-fast` each create the virtual environment when it is
# missing: `make quickstart` installs saev and what it needs, the test targets add the test tools,
# extras and the other SAE libraries the format tests compare against (`pytest -m 'not oracle'` runs
# without them).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.saev-base
DEV := $(VENV)/.saev-dev
REFERENCE := .cache/reference/saev_ref

.PHONY: quickstart test test-fast lint clean

# A .venv whose interpreter is gone (a moved or deleted Python) or older than 3.11 is rebuilt.
VENV_OK := $(shell test ! -d $(VENV) || $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo ok)
ifneq ($(VENV_OK),ok)
$(info $(VENV) is broken or made by a Python older than 3.11: rebuilding it with $(PYTHON))
$(shell rm -rf $(VENV))
endif

$(BASE): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "saev needs Python >= 3.11: run make PYTHON=python3.11"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEV): $(BASE)
	$(PY) -m pip install --quiet -e '.[dev,oracle]'
	touch $@

# The reference saev 0.1.0 (PyPI), unpacked under another import name for the oracle tests.
$(REFERENCE): | $(DEV)
	rm -rf .cache/reference && mkdir -p .cache/reference
	$(PY) -m pip download --quiet --no-deps saev==0.1.0 -d .cache/reference \
		&& $(PY) -m zipfile -e .cache/reference/saev-0.1.0-py3-none-any.whl .cache/reference/unpacked \
		&& mv .cache/reference/unpacked/saev $(REFERENCE) \
		|| echo "reference saev 0.1.0 unavailable: oracle tests against it will be skipped (fail under CI=true)"

quickstart: $(BASE)
	$(VENV)/bin/saev quickstart

# `make test` runs every test; `make test-fast` the unit and oracle tiers, without the end-to-end
# tests (marked `slow`: real commands, training runs, the quickstart, browsers, torchrun). Under
# CI=true a missing oracle package or the reference saev fails the tests instead of skipping them.
test: $(DEV) $(REFERENCE)
	$(PY) -m pytest -q

test-fast: $(DEV) $(REFERENCE)
	$(PY) -m pytest -q -m 'not slow'

# ruff for style; lint-imports for the layer contracts in pyproject.toml (the library never
# imports the commands layer; see docs/architecture.md); mypy for the types saev ships (py.typed),
# configured in pyproject.toml.
lint: $(DEV)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .cache
