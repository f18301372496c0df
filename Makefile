# Every target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PYTEST_ARGS ?=

.PHONY: test test-under-load unit docs lint demo bench bench-smoke chaos chaos-smoke postgres chromium screenshot clean

$(STAMP): setup.py instances/_hotpath.c
	@bash .ci/ensure-venv $(PYTHON) $(VENV)
	@bash .ci/ensure-compiler $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,docs]'
	@touch $(STAMP)

postgres:
	@bash .ci/ensure-postgres

# Headless Chromium and chromedriver for the status page's browser tests.
chromium:
	@bash .ci/ensure-chromium

test: $(BENCH_STAMP) postgres chromium
	$(PY) -m gevent.monkey --module pytest tests $(PYTEST_ARGS)

# The same suite while BURNERS busy loops (default: one per CPU) keep the CPUs busy: it must
# pass on a loaded machine (docs/testing.rst). TESTS narrows it (a file, a directory).
BURNERS ?= $(shell nproc)
TESTS ?= tests
test-under-load: $(BENCH_STAMP) postgres chromium
	bash .ci/under-load -n $(BURNERS) -- $(PY) -m gevent.monkey --module pytest $(TESTS) $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m gevent.monkey --module pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check --line-length 100 --select E,F,W,B,I --ignore E501 supervisor instances tests bench
	$(VENV)/bin/lint-imports --config tox.ini

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W -q -b html docs docs/_build/html

# The demo prints its status page's URL; the page stays up DEMO_LINGER s after the story.
DEMO_LINGER ?= 30
demo: $(STAMP) postgres
	$(PY) -m supervisor.cli demo --linger $(DEMO_LINGER)

# The docs' picture of the status page, from the real service in headless Chromium.
screenshot: $(STAMP) postgres chromium
	$(PY) -m gevent.monkey --module tests.acceptance.status_screenshot docs/_static/status.png

clean:
	rm -rf $(VENV) docs/_build .pytest_cache build instances/*.so

# Benchmarks (bench/README.md): a throwaway cluster from the testing kit, one table.

$(BENCH_STAMP): $(STAMP) setup.py
	$(PY) -m pip install -q -e '.[bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) postgres
	$(PY) -m bench.run --verbose
	$(PY) -m bench.spool --verbose
	$(PY) -m bench.delivery --verbose

bench-smoke: $(BENCH_STAMP) postgres
	$(PY) -m bench.run --smoke
	$(PY) -m bench.spool --smoke
	$(PY) -m bench.delivery --smoke


# The published chaos run (docs/reliability.rst, regenerated): the real service, faults in
# sequence, 0 missing rows asserted. chaos-smoke: a short run of every fault, no report.
chaos: $(BENCH_STAMP) postgres
	$(PY) -m bench.chaos

chaos-smoke: $(BENCH_STAMP) postgres
	$(PY) -m bench.chaos --smoke
