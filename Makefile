# The two quick-start commands: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean servers
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

# Servers the tests run for real: Prometheus and Alertmanager (observability), Redis (the shared embedding
# cache), stunnel (a TLS listener in front of the broker), openssl (its test certificates) and headless
# Chromium with its driver (the browser test of streamscore ui).
# Missing Debian packages are installed with one apt-get update.
SERVERS := prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager redis-server:redis-server stunnel4:stunnel4 openssl:openssl chromium:chromium chromedriver:chromium-driver
# Apache Kafka from KAFKA_HOME (docs/reliability.md, Brokers) runs on Java 17 or newer.
ifneq ($(KAFKA_HOME),)
SERVERS += java:default-jre-headless
endif
servers:
	@missing=""; for s in $(SERVERS); do bin=$${s%%:*}; pkg=$${s#*:}; \
	  command -v $$bin >/dev/null || [ -x /usr/bin/$$bin ] || missing="$$missing $$pkg"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages the tests run for real:$$missing"; \
	    $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  fi

test: $(STAMP) servers
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy streamscore benchmarks

clean:
	rm -rf $(VENV) artifacts
