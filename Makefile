# aeguard's one entry point for set-up, running, tests and measurements.
# Every target installs what it needs into .venv itself, so any of them works as the first command.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := proto/aeguard/v1/aeguard.proto
STUBS := service/rpc/api/aeguard_pb2.py

.PHONY: install proto run test test-fast lint bench bench-peers bench-watch bench-windows soak quality clean node-deps system-deps

install: $(STAMP) $(STUBS)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,spark,bench,dev]'
	touch $@

# Stubs are generated, never edited or committed. The editable install above generates them already,
# through the same build backend as `pip install .`; this regenerates them when the .proto changes.
$(STUBS): $(PROTO_SRC) proto/aeguard_build.py $(STAMP)
	$(PY) proto/aeguard_build.py
	touch $@

proto: $(STUBS)

# The built-in default: train the default model on the bundled telemetry simulator, then serve it.
run: install
	$(PY) -m service.cli demo

# The Node.js client test's packages, from the committed lock file. Without npm the test skips itself.
NODE_STAMP := tests/node/node_modules/.package-lock.json

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/node --ignore-scripts --no-audit --no-fund; \
	else echo "npm not found: tests/test_node_client.py will be skipped"; fi

node-deps: $(NODE_STAMP)

# Debian packages the system tests run for real: Prometheus (with promtool) and the Pushgateway; and
# podman, runc and debootstrap, with which tests/test_container.py builds and runs the image (a Debian
# stand-in for python:3.11-slim-bookworm where Docker Hub is out of reach: deploy/podman-base-image.sh).
# Installed when missing and we are root (as on CI); otherwise the command to run is printed, and
# without podman the container test skips itself.
SYSTEM_TOOLS := prometheus promtool prometheus-pushgateway
CONTAINER_TOOLS := podman runc debootstrap

system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS) $(CONTAINER_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	      prometheus prometheus-pushgateway $(CONTAINER_TOOLS); \
	  else \
	    echo "missing: $$missing; run: sudo apt-get install prometheus prometheus-pushgateway $(CONTAINER_TOOLS)" >&2; \
	    for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || exit 1; done; \
	    echo "without podman, tests/test_container.py is skipped" >&2; \
	  fi; \
	fi

# The whole suite, slow tiers included (CI runs exactly this).
test: install $(NODE_STAMP) system-deps
	$(PY) -m pytest -q

# Unit and integration tiers only.
test-fast: install $(NODE_STAMP) system-deps
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check service training bench tests deploy proto
	$(VENV)/bin/ruff format --check service training bench tests deploy proto
	$(VENV)/bin/mypy service training bench proto/aeguard_build.py

# Serving (aeguard 1 and N processes, two no-op floors, in-process) and batch-job figures; a few minutes.
bench: install
	$(PY) -m bench

# Seldon MLServer beside aeguard, in its own venv (its protobuf major version differs from ours).
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed

$(MLSERVER_STAMP):
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q mlserver==1.7.1 uvloop==0.21.0 onnxruntime
	touch $@

bench-peers: install $(MLSERVER_STAMP)
	$(PY) -m bench --only peers --mlserver-python $(MLSERVER_VENV)/bin/python

# One `aeguard watch` cycle against a backfilled Prometheus: duration and CPU for 10/100/1000 groups.
bench-watch: install system-deps
	$(PY) -m bench.watch_cycle

# 10 minutes of mixed load on the default --processes; RSS and fds of every process (not run by CI).
soak: install
	$(PY) -m bench.soak

# ADBench's classical .npz files (github.com/Minqi824/ADBench, adbench/datasets/Classical/):
# `make quality ADBENCH=DIR`, or AEGUARD_ADBENCH_DIR=DIR in the environment.
ADBENCH ?= $(AEGUARD_ADBENCH_DIR)

quality: install
	$(PY) -m service.cli benchmark $(ADBENCH) --out docs/quality.md

# Windowed models (issue 22): row-wise vs `--window auto` on the simulator and, with SKAB's data folder
# (`make bench-windows SKAB=DIR` or AEGUARD_SKAB_DIR=DIR), on SKAB's protocol; docs/windows.md.
SKAB ?= $(AEGUARD_SKAB_DIR)

bench-windows: install
	$(PY) -m training.benchmark.windows --simulator $(if $(SKAB),--skab $(SKAB))

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) service/rpc/api .pytest_cache .mypy_cache .ruff_cache aeguard.egg-info build dist \
		tests/node/node_modules
	find service training bench tests deploy proto -name __pycache__ -type d -prune -exec rm -rf {} +
