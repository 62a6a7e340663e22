# The two commands: `make run` (embedded default) and `make test` (everything the tests need).
SHELL := /bin/bash
PYTHON ?= python3
PY := .venv/bin/python
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-12)
VENV_STAMP := .venv/.installed-$(REQ_HASH)
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv run test migrate bench clean

$(VENV_STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	rm -f .venv/.installed-*
	touch $@

venv: $(VENV_STAMP)

migrate: venv
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py ensure_admin
	$(PY) manage.py seed_demo
	bin/run

# PostgreSQL is the production database: the whole suite runs on it (.ci/run installs it,
# bin/test-services starts it). SQLite, the embedded default, gets a smoke pass: uploads and the
# registry (its IMMEDIATE-transaction locking), a real task worker, the supervisor, a release flow,
# the demo seed and the model-moving migrations.
PG_URL ?= postgres:///modelyard?host=/var/run/postgresql
SQLITE_SMOKE := tests/registry tests/optimization/test_worker.py tests/config/test_supervisor.py \
	tests/releases/test_release_flow.py tests/metrics/test_seed_demo.py tests/metrics/test_migrations.py

test: venv
	bin/test-services
	@psql -d modelyard -tAc 'select 1' >/dev/null 2>&1 || { \
	  echo "!! PostgreSQL is not running: the suite runs on it (.ci/run installs it)"; exit 1; }
	@echo "== the whole suite on PostgreSQL"
	DATABASE_URL='$(PG_URL)' $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)
	@echo "== SQLite smoke pass: $(SQLITE_SMOKE)"
	$(PY) -m pytest -p no:cacheprovider -q $(SQLITE_SMOKE)

bench: venv
	$(PY) bench/upload.py

clean:
	rm -rf var .pytest_cache
