# Two commands matter: `make run` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.8
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: run test lint format migrate worker bench install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed-prod: requirements/prod.lock pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet -r requirements/prod.lock
	$(BIN)/uv pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements/dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet -r requirements/dev.lock
	$(BIN)/uv pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.installed-prod

install: $(VENV)/.installed-prod
install-dev: $(VENV)/.installed-dev

migrate: install
	$(BIN)/alembic upgrade head

## make run: set up, migrate the database (SQLite file by default) and serve the API
run: migrate
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/optin-backend serve

worker: migrate
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/optin-backend worker

## make test: set up and run the test suite (PostgreSQL too when TEST_POSTGRES_URL is set)
test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install-dev
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
