# leadflow: `make run` starts the suite on the example config, `make test` runs every test tier.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PROTOS := $(shell find protos -name '*.proto')
CONFIG ?= examples/demo.yaml
DATA_DIR ?= data

.DEFAULT_GOAL := help
.PHONY: help install lock protos release-protos lint validate-deploy format test test-unit test-service test-e2e run clean bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# Dependencies come from the lock files (exact versions with hashes); pyproject.toml holds ranges.
$(VENV)/.installed: pyproject.toml requirements-dev.lock
	@tools/system-deps install
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --quiet --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28

lock: ## re-resolve the lock files after a change to pyproject.toml (keeps locked versions)
	$(UV_COMPILE) -o requirements.lock
	$(UV_COMPILE) --extra dev -o requirements-dev.lock

gen/.stamp: $(VENV)/.installed $(PROTOS)
	rm -rf gen && mkdir -p gen/include/google/type
	cp $(SITE)/google/type/money.proto gen/include/google/type/
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos -I gen/include \
	  --python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen $(PROTOS)
	@# gen/ is the import root of the generated code: put it on the venv's path.
	echo "$(abspath gen)" > $(SITE)/leadflow_gen.pth
	@touch $@

install: $(VENV)/.installed gen/.stamp ## set up .venv with the project and its generated code

protos: gen/.stamp ## generate Python code from protos/ into gen/

lint: install validate-deploy ## ruff, mypy --strict, buf lint and format, deploy/ checks
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy leadflow gateway pricing_service routing_service delivery_service ledger_service
	$(VENV)/bin/lint-imports
	@# Every service's tables must match its Alembic revisions (a model change needs a revision).
	$(PY) -m leadflow.migrate --check
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code protos
	@# Wire compatibility with the last release: protos/released.binpb is its image (make release-protos).
	$(VENV)/bin/buf build -o $(VENV)/current-protos.binpb
	$(VENV)/bin/buf breaking $(VENV)/current-protos.binpb --against protos/released.binpb

release-protos: install ## record today's protos as the released wire contract `make lint` checks against
	$(VENV)/bin/buf build -o protos/released.binpb

DEPLOY_LINT := deploy/lint/node_modules/.installed

$(DEPLOY_LINT): deploy/lint/package.json deploy/lint/package-lock.json
	@tools/system-deps lint
	npm ci --prefix deploy/lint --no-audit --no-fund --loglevel=error
	@touch $@

validate-deploy: install $(DEPLOY_LINT) ## promtool (config, rules, alert tests), k8s, compose, dashboards
	@tools/system-deps lint
	promtool check config deploy/prometheus/prometheus.yml
	promtool test rules deploy/prometheus/tests/*.yml
	set -o pipefail; $(VENV)/bin/kubectl kustomize deploy/k8s \
	  | $(VENV)/bin/kubernetes-validate --strict --quiet -
	deploy/lint/node_modules/.bin/dclint -c deploy/lint/dclint.json --max-warnings 0 deploy/compose.yaml
	$(PY) deploy/grafana/generate.py --check

format: install ## apply ruff and buf formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/buf format -w protos

test: install ## install what the tests need (Prometheus, PostgreSQL, ...), then run every tier
	@tools/system-deps test
	$(PY) -m pytest tests

test-unit: install
	$(PY) -m pytest tests/unit

test-service: install
	@tools/system-deps test
	$(PY) -m pytest tests/service

test-e2e: install
	@tools/system-deps test
	$(PY) -m pytest tests/e2e

run: install ## start the whole suite on the example config with its demo buyer (gateway on :8080)
	@# The demo buyer lives as long as the suite: stopped with it on Ctrl-C or any exit.
	$(PY) examples/demo_buyer.py --port 8090 & buyer=$$!; trap "kill $$buyer 2>/dev/null" EXIT; \
	  $(VENV)/bin/leadflow up --config $(CONFIG) --data-dir $(DATA_DIR)

bench: install ## the suite (production-shaped and demo flows) vs a one-process baseline, SQLite and PostgreSQL (~4 min, loopback only)
	$(PY) -m bench.run

clean: ## remove generated code, the venv and local data
	rm -rf gen $(VENV) $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
