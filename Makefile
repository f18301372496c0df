# Every target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PYTEST_ARGS ?=

.PHONY: test unit docs lint demo bench bench-smoke postgres clean

$(STAMP): setup.py
	@bash .ci/ensure-venv $(PYTHON) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,docs]'
	@touch $(STAMP)

postgres:
	@bash .ci/ensure-postgres

test: $(BENCH_STAMP) postgres
	$(PY) -m gevent.monkey --module pytest tests $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m gevent.monkey --module pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check --line-length 100 --select E,F,W,B,I --ignore E501 supervisor instances tests bench
	$(VENV)/bin/lint-imports --config tox.ini

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W -q -b html docs docs/_build/html

demo: $(STAMP) postgres
	$(PY) -m supervisor.cli demo

clean:
	rm -rf $(VENV) docs/_build .pytest_cache

# Benchmarks (bench/README.md): a throwaway cluster from the testing kit, one table.

$(BENCH_STAMP): $(STAMP) setup.py
	$(PY) -m pip install -q -e '.[bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) postgres
	$(PY) -m bench.run --verbose

bench-smoke: $(BENCH_STAMP) postgres
	$(PY) -m bench.run --smoke
