# `make quickstart` and `make test` each create the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.saev-installed
REFERENCE := .cache/reference/saev_ref

.PHONY: quickstart test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The reference saev 0.1.0 (PyPI), unpacked under another import name for the oracle tests.
$(REFERENCE): | $(STAMP)
	rm -rf .cache/reference && mkdir -p .cache/reference
	$(PY) -m pip download --quiet --no-deps saev==0.1.0 -d .cache/reference \
		&& $(PY) -m zipfile -e .cache/reference/saev-0.1.0-py3-none-any.whl .cache/reference/unpacked \
		&& mv .cache/reference/unpacked/saev $(REFERENCE) \
		|| echo "reference saev 0.1.0 unavailable: oracle tests against it will be skipped"

quickstart: $(STAMP)
	$(VENV)/bin/saev quickstart

test: $(STAMP) $(REFERENCE)
	$(PY) -m pytest -q

# ruff for style; lint-imports for the layer contracts in pyproject.toml (the library never
# imports the commands layer; see docs/architecture.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .cache
