# lmlab developer commands. `make setup train` and `make setup test` are the README's quick start.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup train test test-slow test-all lint bench bench-quick

# torch first: 2.13.0 is the CPU wheel on disk here; an unpinned torch would pull a multi-GB CUDA build.
# GPU users: install the CUDA torch build for your driver first (see README), then `make setup` keeps it.
setup:
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q "torch>=2.4"
	$(PIP) install -q -e ".[dev]"

# The embedded default experiment: MiniLM fine-tuned on SST-2 (about 4 minutes on 2 CPU cores).
train:
	lmlab train

# Default suite (excludes tests marked slow).
test:
	$(PYTHON) -m pytest -q

# Only the slow, opt-in tests (exit code 5 = none selected is not a failure).
test-slow:
	$(PYTHON) -m pytest -q -m slow || [ $$? -eq 5 ]

test-all: test test-slow

lint:
	ruff check src tests benchmarks

# Every benchmark side by side, `name: value (goal)` lines (~55 min on a quiet 2-core machine; BENCHMARKS.md).
bench:
	$(PYTHON) benchmarks/run_all.py

# The same scripts at smoke sizes (a few minutes; the figures are not results).
bench-quick:
	$(PYTHON) benchmarks/run_all.py --quick

# MLM-pretrain a small BERT on the unlabeled SST-2 train sentences (~15 min), fine-tune it on 2k SST-2 sentences
# from random init and from the pretrained weights for 3 seeds, print every pair's dev accuracies and the means
# (src/lmlab/compare_pretraining.py).
.PHONY: compare-pretraining
compare-pretraining:
	$(PYTHON) -m lmlab.compare_pretraining
