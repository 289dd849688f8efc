# `make demo`, `make test`, `make bench` set themselves up on a fresh machine:
# Debian packages for GStreamer when missing, then a virtualenv in .venv/ with pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
SHARED ?= ../shared
EXTRAS ?= gst,dev,export,gpu,bench

.PHONY: setup system-deps demo test bench lint clean

setup: system-deps $(VENV)/.installed

system-deps:
	@bash .ci/install-system-deps.sh

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(VENV)/bin/vistream run $(SHARED)/media/traffic/highway_overpass_320x240_60fps.avi \
		--pipeline default --out out/demo

test: setup
	VISTREAM_SHARED=$(SHARED) $(VENV)/bin/python -m pytest -q -rs

bench: setup
	$(VENV)/bin/python benchmarks/regression.py --shared $(SHARED) --out out/bench

lint: setup
	$(VENV)/bin/ruff check engine plugins tests benchmarks
	$(VENV)/bin/ruff format --check engine plugins tests benchmarks
	$(VENV)/bin/mypy engine plugins

clean:
	rm -rf $(VENV) out

# The Triton Inference Server for `pytest -m triton` and benchmarks/triton_compare.py: PyTriton's
# Triton 2.51 binary in its own virtualenv (it needs numpy<2; ~450 MB, ~35-100 s). Idempotent;
# the test fixture calls the same function when the venv is missing, so this only installs early.
TRITON_VENV ?= .venv-triton

.PHONY: triton-server
triton-server: setup
	$(VENV)/bin/python -c "from engine.backends.triton_server import install_server_venv as i; i('$(TRITON_VENV)')"
