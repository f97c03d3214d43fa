# matterflow: every target installs what it needs first (idempotent), so a fresh clone needs only `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
INFRA_VENV := .venv-infra
PY := $(VENV)/bin/python
NODE_BIN := node_modules/.bin
PYTEST_ARGS ?=

.PHONY: help setup infra-tools bench chaos demo test test-clone test-fast lint wmill-lint metadata lock samples clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed node_modules/.installed ## create .venv and node_modules from the pinned dependencies

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "matterflow needs Python >= 3.11 (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	touch $@

infra-tools: $(INFRA_VENV)/.installed ## checkov and cloud-init for the infrastructure tests, in their own .venv-infra

$(INFRA_VENV)/.installed: infra/tools/requirements.txt infra/tools/setup.sh
	bash infra/tools/setup.sh

node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "matterflow needs Node.js >= 20 with npm"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup ## run the pipeline on embedded defaults (Azurite + the bundled sample matter)
	$(VENV)/bin/matterflow demo

bench: setup ## run every benchmark side by side and rewrite bench/RESULTS.md (several minutes)
	$(VENV)/bin/matterflow bench all --out bench

test: setup infra-tools ## run every test (starts and stops Azurite itself) and Windmill's own lint
	$(PY) -m pytest -m "not chaos and not clone" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lint

test-clone: setup ## make test in a fresh clone of HEAD: catches files the tests need but git does not have (10+ min)
	$(PY) -m pytest -m clone $(PYTEST_ARGS)

chaos: setup ## crash-recovery tests: kill -9 mid-run, Azurite restarts, long throttling (minutes)
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

test-fast: setup ## the tests that need no Node tools or emulator
	$(PY) -m pytest -m "not azurite and not node" $(PYTEST_ARGS)

lint: setup wmill-lint ## ruff, wmill lint, and stale Windmill metadata
	$(VENV)/bin/ruff check matterflow f tests
	$(VENV)/bin/matterflow metadata --check

metadata: setup ## regenerate f/**/*.script.yaml and .script.lock
	$(VENV)/bin/matterflow metadata

lock: setup ## re-pin constraints.txt to the installed versions, then the script locks
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^matterflow'; } > constraints.tmp && mv constraints.tmp constraints.txt
	$(VENV)/bin/matterflow metadata

wmill-lint: node_modules/.installed
	$(NODE_BIN)/wmill lint .

samples: setup ## regenerate the bundled sample matter in samples/
	$(VENV)/bin/matterflow samples

clean: ## remove the installed environments
	rm -rf $(VENV) $(INFRA_VENV) node_modules .pytest_cache .hypothesis
