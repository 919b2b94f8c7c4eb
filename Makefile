# Panda — the two commands a user needs: `make demo` and `make test`. Each sets up .venv/ by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.panda-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

# torch first, pinned: a plain `torch>=...` requirement would make pip fetch a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import panda, torch, lightning, deepspeed, snownlp; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m panda.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -m slow tests

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs data/demo
