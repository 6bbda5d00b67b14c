# Two entry points: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEMO_OUT ?= demo_out

.PHONY: demo test install install-dev lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Core install (what `pixellm demo` needs). --no-compile: pip byte-compiles every installed
# module (torch's thousands included), 56 against 27 s of a fresh install on 2 cores; the demo's
# first run compiles only what it imports (6-12 s; docs/demo-rounds.md, sixteenth round).
install: $(BIN)/python
	$(PIP) install --no-compile -c constraints.txt -e .

# Everything the tests need: serve (gradio) and judge extras, pytest, ruff, the npm
# playwright-core driver of the web-demo browser test, and Debian's chromium it drives
# (installed with apt-get when missing and we are root; otherwise a one-line message).
install-dev: $(BIN)/python
	$(PIP) install -c constraints.txt -e ".[dev]"
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	tools/ensure-chromium.sh

demo: install
	$(BIN)/pixellm demo --out $(DEMO_OUT)

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q

lint: install-dev
	$(BIN)/ruff check .

bench: install-dev
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info src/*.egg-info
