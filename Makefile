# bota-ota developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
PYTEST_ARGS ?=

.PHONY: help serve test test-fast lint typecheck fmt install clean screenshots bench

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

# --compile-bytecode: dependencies are byte-compiled once here, so a process started with
# PYTHONDONTWRITEBYTECODE set (common in containers) does not compile them again on every start
# (about 2.5 s of each CLI call, server process and simulator otherwise).
.venv/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

install: .venv/.synced ## Install the project and its pinned dependencies into .venv

serve: install ## Run the server on the embedded defaults (SQLite + files under ./data) on http://127.0.0.1:8000
	.venv/bin/bota-ota serve $(ARGS)

tests/s3server/node_modules/.package-lock.json: tests/s3server/package-lock.json
	npm ci --prefix tests/s3server --no-audit --no-fund
	@touch $@

# axe-core, which the browser tests inject into every portal page (tests/browser/test_accessibility.py).
tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund
	@touch $@

test: install tests/s3server/node_modules/.package-lock.json tests/browser/node_modules/.package-lock.json ## Run the whole test suite (SQLite; PostgreSQL too when BOTA_OTA_TEST_DATABASE_URL is set)
	scripts/test $(PYTEST_ARGS)

FAST_MARKERS := not e2e and not s3 and not ble and not browser and not sim and not slow

test-fast: install ## The inner loop (under 3 minutes): everything but real processes, slow tests, browser, BLE, S3 and simulators; SQLite
	env -u BOTA_OTA_TEST_DATABASE_URL .venv/bin/pytest -n 2 -q -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

screenshots: install ## Save PNGs of the portal's main pages under docs/screenshots/ (needs Debian's chromium)
	.venv/bin/python -m tests.browser.screenshots

lint: install ## ruff lint + format check, and the import contracts (one direction between the layers)
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/lint-imports

typecheck: install ## mypy on src/
	.venv/bin/mypy

fmt: install ## Format and fix lint
	.venv/bin/ruff format src tests benchmarks
	.venv/bin/ruff check --fix src tests benchmarks

bench: install ## Run the benchmarks and print their table (docs/performance.md); ARGS="--quick" or "--only a,c"
	.venv/bin/python -m benchmarks $(ARGS)

clean: ## Remove the venv, tools and caches (keeps ./data)
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache tests/s3server/node_modules tests/browser/node_modules
