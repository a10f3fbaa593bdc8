# `make quickstart` and `make test` each create the virtual environment when it is missing:
# `make quickstart` installs saev and what it needs, `make test` adds the test tools, extras and the
# other SAE libraries the format tests compare against (`pytest -m 'not oracle'` runs without them).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.saev-base
DEV := $(VENV)/.saev-dev
REFERENCE := .cache/reference/saev_ref

.PHONY: quickstart test lint clean

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
		|| echo "reference saev 0.1.0 unavailable: oracle tests against it will be skipped"

quickstart: $(BASE)
	$(VENV)/bin/saev quickstart

test: $(DEV) $(REFERENCE)
	$(PY) -m pytest -q

# ruff for style; lint-imports for the layer contracts in pyproject.toml (the library never
# imports the commands layer; see docs/architecture.md).
lint: $(DEV)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .cache
