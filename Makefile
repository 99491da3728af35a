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
# Test processes (pytest-xdist, whole files to a worker: a file's module fixtures compile once).
# Two on the 2-core CI machine (README "Tests": 29 min against 51 min for one there); 0 runs
# the tests in this process, as a debugger wants.
PYTEST_WORKERS ?= 2
# The host allocator: glibc's malloc hands XLA's large CPU buffers back to the kernel when they
# are freed and faults them in again at the next step (on the 2-core CPU a fifth of the CPU
# time, all of it in the kernel). One arena that never unmaps or trims keeps them; results are
# bitwise the same (README "Performance"). Override any of these, or set them to glibc's
# defaults, where host memory is short.
export MALLOC_ARENA_MAX ?= 1
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 268435456

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
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
