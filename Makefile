# The two commands a user needs: `make demo` and `make test`. Each makes its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,deploy]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.demo

# In parallel (addopts in pyproject.toml), then, alone, the few tests that time themselves
# by the wall clock: beside the parallel ones they would time the others' load.
test: $(STAMP)
	$(PY) -m pytest -q -ra -m 'not timing'
	$(PY) -m pytest -q -ra -n 0 -m timing

test-quick: $(STAMP)
	$(PY) -m pytest -q -ra -m 'not slow and not timing'
	$(PY) -m pytest -q -ra -n 0 -m 'timing and not slow'

bench: $(STAMP)
	$(PY) bench/throughput.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
