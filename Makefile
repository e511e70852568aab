# Two commands work on a fresh machine: `make demo` and `make test`. Both set themselves up.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: demo test lint format venv mosquitto chromium clean bench sparkplug-proto

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The MQTT tests and the demo start a real broker; install it if the machine lacks one.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || ( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto )

# The operator page's browser test drives the system Chromium (Debian packages; no browser download).
chromium:
	@( command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 ) || ( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver )

test: venv mosquitto chromium
	$(VPY) -m ruff check .
	$(VPY) -m pytest -q -p no:cacheprovider

demo: venv mosquitto
	$(VPY) -m linewatch.deploy.demo --out $(DEMO_DIR)

lint: venv
	$(VPY) -m ruff check . && $(VPY) -m ruff format --check .

format: venv
	$(VPY) -m ruff format . && $(VPY) -m ruff check --fix .

bench: venv
	$(VPY) benchmarks/coreset_speed.py
	$(VPY) benchmarks/export_latency.py
	$(VPY) benchmarks/edge_throughput.py
	$(VPY) benchmarks/method_latency.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache

# Sparkplug B: regenerate the protobuf module after editing edge/publish/sparkplug/sparkplug_b.proto.
sparkplug-proto: venv
	$(VPY) -m grpc_tools.protoc -Iedge/publish --python_out=edge/publish edge/publish/sparkplug/sparkplug_b.proto
