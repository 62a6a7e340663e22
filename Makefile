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

# The registry's concurrency, audit-trigger and worker guarantees run again on PostgreSQL
# (the scale-out database). .ci/run installs it; bin/test-services starts it.
PG_URL ?= postgres:///modelyard?host=/var/run/postgresql
PG_TESTS := tests/registry/test_versions_api.py tests/registry/test_models_aliases_api.py \
	tests/releases/test_release_flow.py tests/optimization/test_worker.py

test: venv
	bin/test-services
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)
	@if psql -d modelyard -tAc 'select 1' >/dev/null 2>&1; then \
	  echo "== again on PostgreSQL: $(PG_TESTS)"; \
	  DATABASE_URL='$(PG_URL)' $(PY) -m pytest -p no:cacheprovider -q $(PG_TESTS); \
	else echo "!! PostgreSQL is not running: the PostgreSQL pass was NOT run (.ci/run installs it)"; fi

bench: venv
	$(PY) bench/upload.py

clean:
	rm -rf var .pytest_cache
