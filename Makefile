# The two quick-start commands: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean prometheus redis
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml so pip takes the CPU build on disk.
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamscore demo

# The observability test scrapes a real worker with the Debian prometheus server.
prometheus:
	@command -v prometheus >/dev/null || [ -x /usr/bin/prometheus ] || { \
	  echo "installing the Debian prometheus package (the tests run a real Prometheus server)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# The shared embedding cache is tested against a real redis-server.
redis:
	@command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || { \
	  echo "installing the Debian redis-server package (the tests run a real Redis)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }

test: $(STAMP) prometheus redis
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy streams models schemas training benchmarks

clean:
	rm -rf $(VENV) artifacts
