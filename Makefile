PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test lint bench browser

install:
	$(PIP) install --quiet -e '.[test]'

demo: install
	diagnose demo --out diagnose-report

test: install browser
	$(PYTHON) -m pytest -q

# The report-safety test loads a report in headless Chromium (Debian's package);
# without root or apt it is skipped with a visible reason.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test will be skipped"

lint:
	ruff check probes diagnose tests benchmarks examples

# The bench extra: ckatorch (the CKA row's peer) and the real cases' weights and data.
bench: install
	$(PIP) install --quiet -e '.[test,bench]'
	$(PYTHON) benchmarks/run_all.py
