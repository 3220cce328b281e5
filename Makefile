# sdrlab: `make demo`, `make lab` and `make test` set everything up from a clean clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`, each test module on one worker (its module fixtures run once):
# the suite mostly waits on real-time simulators, sockets, servers and browsers. PYTEST_WORKERS=0: serial.
PYTEST_WORKERS ?= 2
PG_INITDB  := /usr/lib/postgresql/15/bin/initdb
PG_PACKAGE := postgresql-15
CHROMIUM   := /usr/bin/chromium
CHROMIUM_PACKAGE := chromium
APT_GET    ?= apt-get

.PHONY: all venv demo lab test typecheck bench clean

all: test

# order-only: checked on every run (a no-op once initdb exists), never forces a venv rebuild
# The packages go in with uv (from PyPI, bootstrapped into the venv by pip): it resolves and installs
# the ~170 packages in ~15 s where pip takes ~2 min. Same resolution (checked with pip freeze); pip
# itself takes over if uv cannot be had or fails.
$(STAMP): pyproject.toml | $(PG_INITDB)
	$(PYTHON) -m venv $(VENV)
	@if $(PY) -m pip install -q 'uv>=0.5,<1' && $(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'; then :; \
	else echo "make: uv unavailable or failed: installing with pip" >&2; $(PY) -m pip install -q -e '.[test]'; fi
	touch $(STAMP)

# PostgreSQL 15 server binaries for tests/support/servers.py's Postgres (docs: test-services.md section 3.1).
# As root: installed from Debian apt. Otherwise: a hint, and tests that need PostgreSQL fail with
# a RuntimeError saying the same. SDRLAB_PG_BINDIR pointing at another initdb skips all this.
$(PG_INITDB):
	@if [ -n "$$SDRLAB_PG_BINDIR" ] && [ -x "$$SDRLAB_PG_BINDIR/initdb" ]; then \
	  echo "make: PostgreSQL binaries from SDRLAB_PG_BINDIR=$$SDRLAB_PG_BINDIR"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "make: $@ missing: installing $(PG_PACKAGE) from apt"; \
	  $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $(PG_PACKAGE) >/dev/null; \
	else \
	  echo "make: WARNING: $@ is missing and we are not root, so tests that need PostgreSQL will fail." >&2; \
	  echo "make:          install it with 'sudo apt-get install $(PG_PACKAGE)', or set SDRLAB_PG_BINDIR" >&2; \
	  echo "make:          to a directory holding initdb, pg_ctl and postgres." >&2; \
	fi

# Headless chromium that tests/support/browser.py drives through Playwright's executable_path (HTML
# report tests, README screenshots; test-services.md sections 4 and 4.1; never `playwright install`).
# As root: installed from Debian apt (apt-get update only when the cached lists cannot serve it).
# Otherwise: a hint, and tests/support/browser.py's find_chromium raises saying the same.
# SDRLAB_CHROMIUM pointing at an executable, or a chromium / chromium-browser / google-chrome already
# on PATH, skips all this.
$(CHROMIUM):
	@if [ -n "$$SDRLAB_CHROMIUM" ] && [ -x "$$SDRLAB_CHROMIUM" ]; then \
	  echo "make: chromium from SDRLAB_CHROMIUM=$$SDRLAB_CHROMIUM"; \
	elif found=$$(command -v chromium chromium-browser google-chrome | head -n 1) && [ -n "$$found" ]; then \
	  echo "make: chromium from PATH: $$found"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "make: $@ missing: installing $(CHROMIUM_PACKAGE) from apt"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(APT_GET) install -y -qq --no-install-recommends $(CHROMIUM_PACKAGE) >/dev/null 2>&1 || \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends $(CHROMIUM_PACKAGE) >/dev/null; }; \
	else \
	  echo "make: WARNING: $@ is missing and we are not root, so browser tests will fail." >&2; \
	  echo "make:          install it with 'sudo apt-get install $(CHROMIUM_PACKAGE)', or set SDRLAB_CHROMIUM" >&2; \
	  echo "make:          to a chromium or chrome executable." >&2; \
	fi

venv: $(STAMP)

# acquire from the simulated demo7 network, store and index the session, then run the report
# notebook on it (papermill) and print the path of its HTML report
demo: $(STAMP)
	$(VENV)/bin/sdrlab demo --duration 12 --report notebooks/report.ipynb --report-dir reports

# the workbench: JupyterLab on notebooks/, on loopback only, the notebooks using the store and index
# `make demo` fills (./sdrlab-data; SDRLAB_STORE / SDRLAB_DB when set). Prints the URL with its token
# (JUPYTER_TOKEN when set, else a random one, passed in the environment, not on the command line).
# LAB_PORT picks the port; LAB_ARGS adds JupyterLab options. Ctrl+C twice stops it.
LAB_PORT ?= 8888
LAB_ARGS ?=
lab: $(STAMP)
	@token="$${JUPYTER_TOKEN:-$$($(PY) -c 'import secrets; print(secrets.token_hex(24))')}"; \
	if [ -n "$$SDRLAB_STORE$$SDRLAB_DB" ]; then where="SDRLAB_STORE / SDRLAB_DB from the environment"; \
	else where="./sdrlab-data, as make demo"; fi; \
	export SDRLAB_STORE="$${SDRLAB_STORE:-file://$(CURDIR)/sdrlab-data}"; \
	export SDRLAB_DB="$${SDRLAB_DB:-sqlite:///$(CURDIR)/sdrlab-data/index.db}"; \
	export JUPYTER_TOKEN="$$token"; \
	echo "make lab: JupyterLab on notebooks/, sessions stored and indexed in $$where"; \
	echo "make lab: open http://127.0.0.1:$(LAB_PORT)/lab?token=$$token"; \
	exec $(PY) -m jupyterlab --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) --port-retries=0 \
	  --ServerApp.root_dir="$(CURDIR)/notebooks" $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

typecheck: $(STAMP)
	$(PY) -m mypy

# mypy (as `make typecheck`) runs beside pytest and prints its report when done, among pytest's
# progress lines (pytest's summary stays the closing lines): the suite's first minute is mostly
# start-up and waiting, so mypy costs no wall time. Either failing fails the target; pytest exit
# code 5 (no tests collected) is a failure, not a pass.
test: $(STAMP) | $(CHROMIUM)
	@set +e; ( out=$$($(PY) -m mypy 2>&1); mrc=$$?; printf '\nmake test: mypy (beside pytest): %s\n' "$$out"; exit $$mrc ) & typing=$$!; \
	$(PY) -m pytest -p no:cacheprovider $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadscope) tests $(PYTEST_ARGS); rc=$$?; \
	wait $$typing; mrc=$$?; \
	if [ $$mrc -ne 0 ]; then echo "make test: mypy failed (exit $$mrc), its report above" >&2; exit 1; fi; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/streams.py

clean:
	rm -rf $(VENV) .mypy_cache .hypothesis build *.egg-info
