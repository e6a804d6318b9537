# cellsynth: every target sets itself up; `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cellsynth-installed
# A CPU build of torch is pinned so pip never resolves a multi-GB CUDA build on a
# CPU-only machine. Set TORCH_SPEC/TORCH_PIP_ARGS to choose another build
# (e.g. TORCH_PIP_ARGS="--index-url <your CPU wheel index>").
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS    ?=
# test files run on this many processes (pytest-xdist, a file's tests stay together so its
# module fixtures are made once; tests/conftest.py starts the files with the most slow tests
# first): 394 tests in 527 s instead of 626 s on 2 cores
TEST_WORKERS   ?= 2
# threads of torch and numpy in each test worker: two workers of two threads each fight over
# two cores (407 tests, one session, AVX2 CPU: 552 s with 1 thread, 737 s with torch's default)
TEST_THREADS   ?= 1

.PHONY: install demo demo-full bundled-model test test-isa test-fast bench bench-gpu lint docs experiment experiment-3d generalise study study-rounds clean

install: $(STAMP)

# A torch the user already has (e.g. a CUDA build in the system Python) is kept: the
# venv then sees system packages and pip finds torch already satisfied.
$(STAMP): pyproject.toml Makefile
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "using the torch already installed in $(PYTHON)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
	  echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed: left alone"; \
	else $(PY) -m pip install --quiet --no-compile $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; fi
	$(PY) -m pip install --quiet --no-compile -e ".[test,docs]"
	@# bytecode for every installed module, on every core (pip compiles one file at a time:
	@# 112 s against 72 s on 2 cores); wanted where PYTHONDONTWRITEBYTECODE is set, or every
	@# process would compile torch again. Files for newer Pythons fail to compile, as under pip.
	$(PY) -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cellsynth --version
	bash scripts/demo.sh

demo-full: $(STAMP)
	bash scripts/demo_full.sh

bundled-model: $(STAMP)
	$(PY) scripts/bundled_model.py $(BUNDLED_ARGS)

# --durations: every run lists its slowest tests, the ones a `slow` mark is set from. Then the
# cheap part of test-isa: the `kernels` tests that are not slow, as an AVX2 and a plain x86-64
# CPU would run them (TEST_ISA= skips it)
TEST_ISA ?= avx2,default
test: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)
	$(if $(TEST_ISA),$(MAKE) --no-print-directory test-isa ISA_SETS=$(TEST_ISA) ISA_TESTS="kernels and not slow")

# the tests marked `kernels` (what a tiny model learned, bf16 against fp32) under each CPU
# kernel set this CPU can run: its own, AVX2 and plain x86-64 (ATEN_CPU_CAPABILITY with
# ONEDNN_MAX_CPU_ISA to match), so an AVX2 machine shows what an AVX-512 or an old one would;
# run it before submitting a change to training or prediction (docs/reproducibility.md)
ISA_SETS  ?= native,avx2,default
ISA_TESTS ?= kernels
test-isa: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) scripts/kernel_sets.py --sets $(ISA_SETS) -- -m "$(ISA_TESTS)" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py

bench-gpu: $(STAMP)
	$(PY) bench/bench_gpu.py

lint: $(STAMP)
	$(VENV)/bin/ruff check cellsynth_cli tests bench scripts docs/hooks
	$(VENV)/bin/ruff format --check cellsynth_cli tests bench scripts docs/hooks

# the documentation site (mkdocs-material) in site/; --strict: a broken link fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# `cellsynth pipeline` on the bundled image's left half against a real-label baseline, scored on
# the held-back right half (scripts/experiment.py). The recipe's defaults are the study's best
# row (a pseudo-sketch conditioned DDPM, guidance 2, touching nuclei, real background squares).
# It starts from the shipped DDPM that this recipe trained (41 min on 2 CPU cores);
# EXPERIMENT_DDPM=train trains it. EXPERIMENT_ARGS="--set segment.epochs=100 --budget quick" ...
EXPERIMENT_DDPM ?= bundled:dsb2018-nuclei-conditional
EXPERIMENT_ARGS ?=
# $(call ddpm,MODEL): the pipeline's DDPM setting for an experiment (none for `train`)
ddpm = $(if $(filter train,$(1)),,--set train.model=$(1))
experiment: $(STAMP)
	$(PY) scripts/experiment.py $(call ddpm,$(EXPERIMENT_DDPM)) $(EXPERIMENT_ARGS)

# the same on the bundled 3D stack (data/cells3d), with the 3D row's recipe, from the shipped
# 3D DDPM that this recipe trained (25-60 min on 2 CPU cores); EXPERIMENT_3D_DDPM=train
# trains it (and --paper-3d, whose DDPM is unconditional, needs it)
EXPERIMENT_3D_DDPM ?= bundled:cells3d-nuclei-conditional
experiment-3d: $(STAMP)
	$(PY) scripts/experiment.py --dataset cells3d $(call ddpm,$(EXPERIMENT_3D_DDPM)) $(EXPERIMENT_ARGS)

# issue 46: the generalisation bench (scripts/bench_data.py): how right `simulate fit` is on
# each data set, then the pipeline against a real-label Cellpose per set and budget (hours on a
# CPU; GENERALISE_ARGS="--fit-only" for the fit table alone, "--sets dsb2018-dim --budgets quick",
# "--seeds 0,1,2" for three seeds of simulation, synthesis and both arms' Cellpose)
GENERALISE_ARGS ?=
generalise: $(STAMP)
	$(PY) scripts/generalise.py $(GENERALISE_ARGS)

# issue 12: experiment variants x DDPM seeds in one table (hours on a CPU; STUDY_ARGS="--rows paper --seeds 0")
study: $(STAMP)
	$(PY) scripts/study.py $(STUDY_ARGS)

# issue 25: self-training rows x seeds against the real-label model of the same Cellpose seed
# (hours on a CPU; ROUNDS_STUDY_ARGS="--rows rounds --seeds 0")
ROUNDS_STUDY_ARGS ?=
study-rounds: $(STAMP)
	$(PY) scripts/rounds_study.py $(ROUNDS_STUDY_ARGS)

clean:
	rm -rf $(VENV) site demo_out demo_full_out bundled_build experiment_out experiment_3d_out experiment_study experiment_rounds generalise_out .pytest_cache
