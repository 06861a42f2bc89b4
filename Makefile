# Two commands for a new user:  `make demo` (the main job, offline)  and  `make test` (the whole suite).
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 + torchvision 0.29.1: a matching pair (open_clip needs torchvision).
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.taskres-installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/taskres demo

# The report tests open report.html in a real headless browser: Debian's chromium, installed here when
# missing and we are root (otherwise those tests skip and say why).
test: $(STAMP)
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
		echo "could not install chromium: the browser tests will skip"
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/taskres_train.py

clean:
	rm -rf $(VENV) demo-results .pytest_cache
