# One command for each habit; identical locally and in CI.
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv

.PHONY: install run test lint bench clean

install: $(VENV)/.installed

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet
	touch $@

run: install
	$(VENV)/bin/jitgate up --demo

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest --cov --cov-report=term:skip-covered

bench: install
	$(VENV)/bin/python bench/gateway.py
	$(VENV)/bin/python bench/workers.py
	$(VENV)/bin/python bench/deployments.py
	$(VENV)/bin/python bench/scale.py
	$(VENV)/bin/python bench/streaming.py
	$(VENV)/bin/python bench/policy.py

clean:
	rm -rf $(VENV) .tools .jitgate .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
