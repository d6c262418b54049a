PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test lint bench

install:
	$(PIP) install --quiet -e '.[test]'

demo: install
	diagnose demo --out diagnose-report

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check probes diagnose tests benchmarks examples

bench: install
	$(PYTHON) benchmarks/run_all.py
