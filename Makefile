# Shortcuts; each target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

run: install
	$(BIN)/gunicorn -c gunicorn.conf.py

test: install
	$(BIN)/python -m pytest -n auto

lint: install
	$(BIN)/ruff format --check service gunicorn.conf.py tests benchmarks
	$(BIN)/ruff check service gunicorn.conf.py
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
