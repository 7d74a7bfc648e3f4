# Longshore — one Makefile for every routine task. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
BUF    := tools/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: help bootstrap protos protos-check buf-lint lint fmt typecheck config-docs-check check test test-unit test-integration bench up down clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

bootstrap: $(VENV)/.installed tools/node_modules/.installed ## Install everything the project needs (system packages, venv, buf)

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh python
	@touch $@

tools/node_modules/.installed: tools/package.json clients/node/package.json tests/integration/e2b/node/package.json
	bash scripts/bootstrap.sh node
	@touch $@

protos: $(VENV)/.installed ## Regenerate gen/python from protos/ (idempotent)
	bash scripts/gen-protos.sh $(PY)

protos-check: $(VENV)/.installed ## Fail when gen/python differs from what protos/ generate
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	{ bash scripts/gen-protos.sh $(PY) "$$tmp" >/dev/null 2>&1 || { echo "protoc failed: run 'make protos'" >&2; exit 1; }; } && \
	diff -r -q "$$tmp/longshore" gen/python/longshore || { echo "gen/ is stale: run 'make protos' and commit it" >&2; exit 1; }

buf-lint: tools/node_modules/.installed ## buf STANDARD lint on protos/
	$(BUF) lint

lint: $(VENV)/.installed ## ruff lint + format check
	$(BIN)/ruff check services clients tests bench
	$(BIN)/ruff format --check services clients tests bench

fmt: $(VENV)/.installed ## ruff format + autofix
	$(BIN)/ruff format services clients tests bench
	$(BIN)/ruff check --fix services clients tests bench

typecheck: $(VENV)/.installed ## mypy --strict on services/
	$(BIN)/mypy services

config-docs-check: $(VENV)/.installed ## Fail when docs/configuration.md is stale against the settings models
	$(PY) scripts/gen-config-docs.py --check

check: protos-check buf-lint lint typecheck config-docs-check ## Every static check CI runs

test: bootstrap check ## Install what is missing, then run the whole suite (what CI runs)
	bash scripts/ensure-docker.sh
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && { echo "pytest collected no tests" >&2; exit 1; }; exit $$rc

test-unit: bootstrap ## Only tests/unit
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: bootstrap ## Only tests/integration
	bash scripts/ensure-docker.sh
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

bench: bootstrap ## Run the benchmarks under bench/ and write bench/results/
	bash scripts/ensure-docker.sh
	$(PY) -m bench

.PHONY: base-image images
base-image: ## Build the local Python base image once when the official slim image cannot be pulled
	bash scripts/base-image.sh >/dev/null

images: ## Build the four service images (wheels built on the host; base from base-image)
	bash scripts/compose-images.sh

up: $(VENV)/.installed ## Run the system with compose: install what is missing (incl. the CLI in .venv), build, start, wait, print addresses (PROFILES="postgres tracing")
	PROFILES="$(PROFILES)" bash scripts/compose-up.sh

down: ## Stop the compose stack (VOLUMES=1 also removes its volumes and sandboxes)
	VOLUMES="$(VOLUMES)" bash scripts/compose-down.sh

clean: ## Remove the venv and caches
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
