# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The UI's address: its own variables, so a HOST or PORT in the environment cannot move it
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000
# other names the UI answers to (space separated), e.g. the machine's DNS name behind a TLS proxy
UI_ALLOWED_HOSTS ?=
WEATHER_PORT ?= 8765
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export LAKEHOUSE_DEMO_ROOT ?= $(CURDIR)/.demo
export PYTHONUNBUFFERED := 1

.PHONY: install demo test lint dg-check ui java-check clean reliability bench instance e2e spark-connect spark-cluster cluster-test

# The Spark driver's class archive (lakehouse/io/class_archive.py): built once per Java and PySpark, in the venv
install: $(STAMP)
	@$(PY) -m lakehouse.io.class_archive

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

# The Dagster instance: dagster_home/dagster.yaml (SQLite under $(DAGSTER_HOME)) by default;
# DAGSTER_STORAGE=postgres selects dagster_home/dagster.postgres.yaml (DAGSTER_PG_* variables, see
# docs/operations.md) and installs the pinned dagster-postgres extra. Copied only when it differs.
DAGSTER_STORAGE ?= sqlite
INSTANCE_YAML := dagster_home/$(if $(filter postgres,$(DAGSTER_STORAGE)),dagster.postgres.yaml,dagster.yaml)

instance: install
	@case "$(DAGSTER_STORAGE)" in sqlite|postgres) ;; *) echo "ERROR: DAGSTER_STORAGE must be sqlite or postgres, not '$(DAGSTER_STORAGE)'"; exit 1;; esac
	@if [ "$(DAGSTER_STORAGE)" = postgres ]; then \
	  for v in DAGSTER_PG_HOST DAGSTER_PG_PORT DAGSTER_PG_USER DAGSTER_PG_PASSWORD DAGSTER_PG_DB; do \
	    [ -n "$${!v}" ] || { echo "ERROR: DAGSTER_STORAGE=postgres needs $$v (see docs/operations.md)"; exit 1; }; done; \
	  $(PY) -c 'import dagster_postgres' 2>/dev/null || $(PY) -m pip install --quiet -e '.[dev,postgres]'; \
	fi
	@mkdir -p $(DAGSTER_HOME)
	@cmp -s $(INSTANCE_YAML) $(DAGSTER_HOME)/dagster.yaml || { cp $(INSTANCE_YAML) $(DAGSTER_HOME)/dagster.yaml; \
	  echo "instance: $(INSTANCE_YAML) -> $(DAGSTER_HOME)/dagster.yaml ($(DAGSTER_STORAGE) storage)"; }

demo: install java-check instance
	$(PY) -m lakehouse.sim.demo --world $(LAKEHOUSE_DEMO_ROOT)

test: install java-check
	@# pytest exits 5 when it collects no tests; make fails on any non-zero status
	$(PY) -m pytest -q

# Lint (ruff), formatting (ruff format) and types (mypy, configured in pyproject.toml); .ci/run runs it first.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Coverage of lakehouse/ over the default test selection (pytest-cov): a table in the terminal and
# coverage.json (git-ignored). Lines that run only inside Spark's Python workers are not counted.
.PHONY: coverage
coverage: install java-check
	$(PY) -m pytest -q --cov=lakehouse --cov-report=term --cov-report=json:coverage.json

# Dagster's own checks of the declarations (lakehouse/defs/*/<name>/defs.yaml): each file against its
# component's JSON schema, then the whole project loaded (every file validated, cross-references checked);
# .ci/run runs it after lint. `dg` runs in this venv (VIRTUAL_ENV), so it warns about no other one.
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dg
dg-check: install instance
	$(DG) check yaml
	$(DG) list defs > /dev/null

# The real webserver + daemon driven through GraphQL and headless Chromium (a few minutes: one Spark run).
# The browser test skips with its reason when /usr/bin/chromium is missing (.ci/run installs it).
e2e: install java-check
	$(PY) -m pytest -q -m 'e2e or browser' lakehouse_tests/e2e

# The same small world through local Spark, a Spark Connect server and a standalone cluster (master + one
# worker), all started from the pyspark package: identical tables, every task on the worker (a few minutes).
cluster-test: install java-check
	$(PY) -m pytest -q -m cluster lakehouse_tests/test_cluster.py

# A Spark Connect server on 127.0.0.1:$(SPARK_CONNECT_PORT) (Ctrl-C stops it); point the lakehouse at it with
# LAKEHOUSE_SPARK_REMOTE=sc://127.0.0.1:$(SPARK_CONNECT_PORT) or `spark.remote` in configs/lakehouse.yaml.
SPARK_CONNECT_PORT ?= 15002
spark-connect: install java-check
	exec $(PY) -m lakehouse.io.spark_servers connect --port $(SPARK_CONNECT_PORT)

# A standalone master on 127.0.0.1:$(SPARK_MASTER_PORT) and one worker (Ctrl-C stops both); point the
# lakehouse at it with LAKEHOUSE_SPARK_MASTER=spark://127.0.0.1:$(SPARK_MASTER_PORT).
SPARK_MASTER_PORT ?= 7077
spark-cluster: install java-check
	exec $(PY) -m lakehouse.io.spark_servers standalone --port $(SPARK_MASTER_PORT) --webui-port 8080

reliability: install java-check
	$(PY) -m pytest -q -m slow

bench: install java-check
	$(PY) -m benchmarks

# The demo world's weather provider serves alongside the UI (LAKEHOUSE_WEATHER_URL is set for the UI).
# lakehouse.ui: Dagster's webserver behind a guard (Host allow-list, same-origin mutations only, a token
# beyond loopback: LAKEHOUSE_UI_TOKEN) + the daemon (sensors, schedules, automation, backfills) on
# $(UI_HOST) only. `exec` replaces the shell, so Ctrl-C reaches the launcher, which stops both.
ui: install java-check instance
	@echo "Dagster UI: http://$(UI_HOST):$(UI_PORT)  (webserver + daemon; Ctrl-C stops both)"
	exec $(PY) -m lakehouse.sim.weather_server --port $(WEATHER_PORT) --quiet -- \
	  $(PY) -m lakehouse.ui --host $(UI_HOST) --port $(UI_PORT) $(foreach h,$(UI_ALLOWED_HOSTS),--allow-host $(h))

clean:
	rm -rf .lakehouse .demo .dagster_home
