# Two commands: `make demo` runs Tripwire, `make test` passes the tests. `make bench` measures.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test bench lint tag serve clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(PIP) install -q -e '.[test]'
	touch $@

tag/node_modules/.package-lock.json: tag/package.json tag/package-lock.json
	cd tag && npm ci --no-audit --no-fund --loglevel=error

# The npm client libraries the tests drive unchanged (Segment's and RudderStack's).
tests/clients/node_modules/.package-lock.json: tests/clients/package.json tests/clients/package-lock.json
	cd tests/clients && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts

## Run the demo: collector, request bin, dashboard and the demo shop (flags: ARGS=--no-browser).
demo: $(VENV)/.runtime
	$(VENV)/bin/tripwire demo $(ARGS)

## Run the collector with the example config (flags: ARGS="--port 8001"); it keeps its state in
## .tripwire-serve, apart from the demo's .tripwire, so the two can run side by side.
serve: $(VENV)/.runtime
	TRIPWIRE_DATA_DIR="$${TRIPWIRE_DATA_DIR:-.tripwire-serve}" \
	  $(VENV)/bin/tripwire serve --config examples/tripwire.yaml $(ARGS)

## Build the JavaScript tag (fails above its size budget).
tag: tag/node_modules/.package-lock.json
	cd tag && npm run build

## Install what the tests need, build and check the tag, run the whole suite.
test: $(VENV)/.test tag/node_modules/.package-lock.json tests/clients/node_modules/.package-lock.json
	./scripts/system-deps.sh redis-server chromium
	cd tag && npm run check
	$(VENV)/bin/ruff check collector tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest

## Run the benchmarks and print their figures and ratios.
bench: $(VENV)/.test
	./scripts/system-deps.sh wrk redis-server valgrind
	$(PY) benchmarks/run.py

lint: $(VENV)/.test
	$(VENV)/bin/ruff check collector tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) tag/node_modules tests/clients/node_modules .tripwire .tripwire-serve .pytest_cache .mypy_cache .ruff_cache
