# The two commands of the README, each doing its own set-up on a fresh machine:
#   make run    # the main job on the embedded InstructWorld default
#   make test   # the test suite
# Both create .venv and install instructjax with its dev extra when setup.py changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, pinned, so that the `torch>=...` of the dev extra installs nothing
# more (an unpinned torch would pull the CUDA build). Override for other platforms.
TORCH_SPEC ?= torch==2.13.0
WORKDIR ?= runs/instructworld
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/python experiments/pipeline.py --config=configs/pipeline.py:tiny --workdir=$(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
