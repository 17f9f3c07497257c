# connectomix: `make demo` runs the pipeline on the default phantom; `make test` runs the test suite.
# Both create .venv (pinned from requirements.lock) on first use.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
PYTEST_ARGS ?=

DATASET ?= phantom

.PHONY: demo view system-deps test test-slurm test-all bench results-doc lint lock clean help train-gpu

help:
	@echo "make demo      run the whole workflow on config.yaml (the phantom); outputs under results/"
	@echo "make view      serve results/$$DATASET (default phantom) to a local Neuroglancer and open it (Ctrl-C stops)"
	@echo "make test      run the test suite (not the tests marked slow or slurm); installs Chromium when root"
	@echo "make test-slurm  run the pipeline on a throw-away SLURM cluster (root, slurm-wlm, munge; see docs/slurm.md)"
	@echo "make test-all  run every test, slow and slurm ones included (slurm ones skip without SLURM)"
	@echo "make bench     run the benchmarks (tables under benchmarks/results/), then make results-doc"
	@echo "make results-doc  regenerate docs/results.md from benchmarks/results/*.json"
	@echo "make lint      snakemake --lint"
	@echo "make train-gpu train the continuity campaign's U-Net for GPU_SECONDS (540) on DEVICE (cuda) into GPU_OUT"
	@echo "make lock      re-resolve requirements.in into requirements.lock"

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found); set PYTHON=..."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/local --cores $(CORES)
	@$(BIN)/python -m connectomix.summary results

view: $(STAMP)
	$(BIN)/python -m connectomix view results/$(DATASET)

# headless Chromium for the viewer screenshot test (tests/test_view.py skips, saying why, where it cannot be installed)
system-deps:
	@scripts/install-system-deps.sh

test: $(STAMP) system-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

# starts and stops its own single-node cluster (scripts/slurm-cluster.sh); -s shows the timings it prints
test-slurm: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m slurm -s -v --durations=0 $(PYTEST_ARGS)

test-all: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# The continuity campaign's U-Net for a fixed time budget on one GPU (models/campaigns/gpu/recipe.json; see
# models/README.md); a second call resumes from GPU_OUT.
GPU_SECONDS ?= 540
GPU_OUT ?= models/campaigns/gpu/run
DEVICE ?= cuda
train-gpu: $(STAMP)
	PYTHON=$(BIN)/python scripts/train-gpu.sh models/campaigns/gpu/recipe.json $(GPU_OUT) $(GPU_SECONDS) $(DEVICE)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

results-doc: $(STAMP)
	$(BIN)/python benchmarks/results_doc.py

lint: $(STAMP)
	$(BIN)/snakemake --lint

lock:
	rm -rf /tmp/connectomix-lock && $(PYTHON) -m venv /tmp/connectomix-lock
	/tmp/connectomix-lock/bin/pip install --quiet -r requirements.in
	( echo "# Exact pins, resolved from requirements.in by 'make lock' (Python 3.11, x86_64). Installed by 'make'."; \
	  /tmp/connectomix-lock/bin/pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' ) > requirements.lock
	$(PYTHON) src/connectomix/envs.py .

clean:
	rm -rf results .snakemake
