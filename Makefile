PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --constraint constraints.txt
export KERAS_BACKEND := torch
export MPLBACKEND := Agg

.PHONY: run test install install-test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -q -e '.[test,ray,tune,tensorboard]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/reglab study --out results

test: install-test
	$(PY) -m pytest -q

bench: install-test
	$(PY) benchmarks/bench_overhead.py

clean:
	rm -rf $(VENV) results
