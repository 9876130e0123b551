# Two commands do all the set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test check lint typecheck clean bench e2e-deps monitoring-deps

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## run: the service with the embedded dev sidecar on the default ports
run: install
	$(VENV)/bin/realtime-sync dev

## test: unit and integration tests (real processes, sockets and gRPC), the Node tests of
## the browser client and its TypeScript declarations, the board in headless chromium, and
## the Prometheus rules, scrape and Grafana dashboard checks
test: install e2e-deps monitoring-deps
	REALTIME_SYNC_REQUIRE_E2E=1 $(PY) -m pytest

## e2e-deps: the browser client's test dependencies (ws, TypeScript) and Debian's chromium
## (for Playwright)
e2e-deps:
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

## monitoring-deps: Debian's prometheus package: promtool (rule checks and unit tests) and
## the server the scrape test starts on a free port (its own system service is not used)
monitoring-deps:
	@test -x /usr/bin/promtool -a -x /usr/bin/prometheus || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

## bench: the benchmark suite (bench/RESULTS.md); not part of `make test`. ~6-8 minutes.
bench: install
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench.run $(BENCH_ARGS)

## check: the whole quality gate
check: lint typecheck test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis test-artifacts
