# The two commands of README.md: `make demo` (the main job on an embedded local S3 server) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

setup:
	@./scripts/bootstrap.sh

demo: setup
	$(PY) -m tiercache.demo

lint: setup
	$(VENV)/bin/ruff check tiercache kernels tests bench

test: setup lint
	$(VENV)/bin/pytest tests

bench: setup
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
