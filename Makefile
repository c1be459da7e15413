# The two commands a user types: `make demo` and `make test`.
# Both bootstrap .venv on first use. torch is pinned here (CPU build on disk) and
# installed before the project, whose own requirement is a range.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint bench clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/demo.py

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/storage.py

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
