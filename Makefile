# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 3000
WEATHER_PORT ?= 8765
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export LAKEHOUSE_DEMO_ROOT ?= $(CURDIR)/.demo
export PYTHONUNBUFFERED := 1

.PHONY: install demo test ui java-check clean reliability bench

install: $(STAMP)

# Reinstalls only when pyproject.toml changes (the stamp is newer otherwise).
$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

java-check:
	@command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ] || { \
	  echo "ERROR: Java is missing. PySpark needs a Java 17 runtime."; \
	  echo "       Install it, e.g.:  sudo apt-get install -y openjdk-17-jre-headless"; \
	  exit 1; }

$(DAGSTER_HOME)/dagster.yaml: dagster_home/dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster_home/dagster.yaml $@

demo: install java-check $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m lakehouse.sim.demo --world $(LAKEHOUSE_DEMO_ROOT)

test: install java-check
	@# pytest exits 5 when it collects no tests; make fails on any non-zero status
	$(PY) -m pytest -q

reliability: install java-check
	$(PY) -m pytest -q -m slow

bench: install java-check
	$(PY) -m benchmarks

# The demo world's weather provider serves alongside the UI (LAKEHOUSE_WEATHER_URL is set for dagster dev).
ui: install java-check $(DAGSTER_HOME)/dagster.yaml
	@echo "Dagster UI: http://$(HOST):$(PORT)  (Ctrl-C stops it)"
	exec $(PY) -m lakehouse.sim.weather_server --port $(WEATHER_PORT) --quiet -- \
	  $(VENV)/bin/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

clean:
	rm -rf .lakehouse .demo .dagster_home
