# sdrlab: `make demo` and `make test` set everything up from a clean clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all venv demo test typecheck bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sdrlab demo

typecheck: $(STAMP)
	$(PY) -m mypy

# pytest exit code 5 (no tests collected) is a failure, not a pass
test: $(STAMP) typecheck
	@set +e; $(PY) -m pytest -p no:cacheprovider tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/streams.py

clean:
	rm -rf $(VENV) .mypy_cache .hypothesis build *.egg-info
