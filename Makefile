# dinoseek: the two quick-start commands are `make run` and `make test` (see README.md).
#
# TORCH_SPEC pins torch for the install. torch==2.13.0 is a CPU build on hosts that have it
# as a local file (this project's CI) and the CUDA build from PyPI elsewhere. On a host whose
# torch is already installed (a GPU image), run `make install TORCH_SPEC=` to keep it.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRAS)

IMAGES ?=
MODEL ?=
DEMO_DIR ?= demo
PORT ?= 8000

.PHONY: install test test-slow lint run demo-data clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

## make test: install, then lint, check the layering, type-check and run the fast tests
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not slow"

## make test-slow: the tests marked slow (processes, signals, real servers, benchmarks);
## CI runs them after `make test`
test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy

## make run [IMAGES=folder MODEL=hub-id-or-dir PORT=8000]: index IMAGES into ./dinoseek-data,
## then serve the HTTP API on 127.0.0.1:PORT (Ctrl-C stops it). Without IMAGES and MODEL it
## builds a demo folder and a tiny random-weight DINOv2, offline.
run: install
	@if [ -z "$(IMAGES)$(MODEL)" ]; then $(MAKE) --no-print-directory demo-data; fi
	$(BIN)/dinoseek index $(or $(IMAGES),$(DEMO_DIR)/images) --labels-from-folders $(RUN_MODEL)
	$(BIN)/dinoseek serve --port $(PORT) $(RUN_MODEL)

# The demo model unless MODEL is given; with only IMAGES, the collection's or the default model.
RUN_MODEL = $(if $(MODEL),--model $(MODEL),$(if $(IMAGES),,--model $(DEMO_DIR)/tiny-dinov2))

demo-data: install
	@test -d $(DEMO_DIR)/tiny-dinov2 || $(BIN)/python -m dinoseek.synthetic model $(DEMO_DIR)/tiny-dinov2
	@test -d $(DEMO_DIR)/images || $(BIN)/python -m dinoseek.synthetic images $(DEMO_DIR)/images --count 200

clean:
	rm -rf $(VENV) $(DEMO_DIR) dinoseek-data .mypy_cache .ruff_cache .pytest_cache
