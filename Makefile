# Everything installs into .venv/ at the repository root; re-running is cheap (stamp files).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
SETUP_ID := $(shell cat pyproject.toml constraints.txt requirements-assets.txt | sha1sum | cut -c1-12)
STAMP   := $(VENV)/.stamp-$(SETUP_ID)
# Source builds (llama-cpp-python, this project) install their build requirements in isolated environments,
# which honour PIP_CONSTRAINT but not -c: so they get the pinned versions too (tests/test_setup_guard.py).
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# Debian packages (the headless-browser test's chromium), one a line.
DEBS    := $(shell grep -v '^\s*\#' requirements-debian.txt)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-run setup-api setup-browser setup-bigbench run test lint lint-imports bench clean docs docs-serve

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[all,dev]"
	$(PIP) --no-deps -r requirements-assets.txt
	touch $@

# What `make run` needs, and no more (no Ray, serving, docs or test tools): a fresh clone's first `make run`
# installs about 45 s faster. Skipped when the full set-up is already there; `make test` adds the rest.
RUN_STAMP := $(VENV)/.stamp-run-$(SETUP_ID)

setup-run: $(RUN_STAMP)

$(RUN_STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	test -f $(STAMP) || { $(PIP) --upgrade pip && $(PIP) -e ".[transformers,plots]" && \
		$(PIP) --no-deps -r requirements-assets.txt; }
	touch $@

# llama.cpp's OpenAI-compatible server for the `api` tests: a source build (~11 min on 2 cores)
# the first time; pip's wheel cache makes later installs on the same machine take seconds.
setup-api: setup
	$(BIN)/python -c "import llama_cpp.server" 2>/dev/null || $(PIP) "llama-cpp-python[server]==0.3.36"

# Debian's chromium for the headless-browser report test.
setup-browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; }

# Optional data, never a step of `make test`: the BIG-bench sets (truthfulqa-mc, mathqa, truthfulqa-gen) from a
# copy of bigbench-1.0.0.tar.gz, its extracted folder or its task files, which the package index no longer offers:
#   make setup-bigbench SDIST=PATH
setup-bigbench: setup
	$(BIN)/refcal datasets --setup-bigbench $(if $(SDIST),--sdist "$(SDIST)")

# The main job on the embedded default (real packaged models and data).
run: setup-run
	$(BIN)/refcal run

test: setup setup-api setup-browser
	$(BIN)/ruff check src tests benchmarks scripts
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(MAKE) lint-imports
	$(BIN)/pytest -q

# The layer, no-cycle and independence contracts of pyproject.toml [tool.importlinter] (docs/ARCHITECTURE.md).
lint-imports: setup
	$(BIN)/lint-imports

# The documentation site (MkDocs + Material): built into site/, or served with live reload on 127.0.0.1:8000.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

bench: setup
	$(BIN)/python benchmarks/bench_fit.py
	$(BIN)/python benchmarks/bench_scoring.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
