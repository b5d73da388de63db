# lowprob: `make run` sets everything up and runs the main job; `make test` sets up and runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; set TORCH_SPEC to pick another (e.g. a CUDA build on a GPU machine).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test test-slow test-fuzz test-all lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## The main job: a 1e-9 event on a built-in planted model (its exact value is known), estimated at the paper's
## budget of 2^16 model calls by naive sampling (which can only bound it), ITGIS and adaptive multilevel splitting.
run: $(STAMP)
	$(BIN)/lowprob compare planted-two-modes-e9 --model planted-two-modes --target hit \
	    --estimator naive --estimator itgis --estimator ams --paper-budget --seed 0 --output results/main.jsonl

## The test suite (everything but tests marked slow or fuzz; GPU tests skip themselves without a GPU), one pytest
## worker per CPU core (pytest-xdist; each test runs torch on one thread, tests/conftest.py). PYTEST_WORKERS=0
## runs it in this process.
PYTEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not slow and not fuzz" -q

## The hostile-input fuzz runs only (tests marked fuzz: over 10 000 specs, experiment files and flag sets);
## -rP prints each run's tally of outcomes.
test-fuzz: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m fuzz -q -rP

## Tests marked slow only (long statistical runs); exit status 5 (none selected) counts as success.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m slow -q || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

## The documentation site (mkdocs.yml: docs/ plus an API reference from the docstrings) in site/, strict: a broken
## link or anchor, a page missing from the navigation or an API entry that cannot be collected fails the build.
.PHONY: docs
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

## Lint and type-check (the layering contract is tests/test_architecture.py).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy core dsl plugins lowprob

## The training corpus (data/corpus, git-ignored): installs its Debian packages (needs root and apt), then
## assembles the code/english/spanish slices and prints their sizes and sha256 (compare with docs/models.md).
CORPUS_PACKAGES := debian-handbook python3.11-doc manpages-es
.PHONY: corpus tokenizer
corpus: $(STAMP)
	apt-get install -y $(CORPUS_PACKAGES)
	$(BIN)/python scripts/build_corpus.py data/corpus

## The built-in tokenizer and frequency tables (plugins/builtin/data) from the corpus; run `make corpus` first.
tokenizer: $(STAMP)
	$(BIN)/python scripts/train_tokenizer.py data/corpus plugins/builtin/data

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis

## lowprob's trained models (plugins/builtin/data/models) from the corpus and tokenizer; uses a GPU if present.
## Run `make corpus` first. About 25 minutes on a 2-core CPU (600 steps per model; see docs/models.md).
.PHONY: models
models: $(STAMP)
	$(BIN)/python scripts/train_models.py --corpus data/corpus --layers 1 2 4 --steps 600
