# make serve / make test do the whole set-up on first run; make install alone installs.
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
TORCH_SPEC ?= torch==2.13.0
LLAMA_CPP_VERSION := 0.3.36
# llama-cpp-python compiles llama.cpp (minutes): build its wheel once, portable, into a cache outside pip's.
WHEEL_CACHE ?= $(HOME)/.cache/tandem/wheels
LLAMA_WHEEL_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
# A --find-links on the command line replaces the configured one, so pass both.
FIND_LINKS := $(addprefix --find-links ,$(WHEEL_CACHE) $(PIP_FIND_LINKS))
STAMP := $(VENV)/.tandem-installed
# The llama-cpp-python source: the wheel is built from it, and the tests read llama.cpp's real tokenizer
# vocabularies and chat templates from it (vendor/llama.cpp/models/): kept in tandem's cache, never committed.
SDIST_DIR ?= $(HOME)/.cache/tandem/sdist
LLAMA_SDIST := $(SDIST_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
# Programs the tests drive for real (Debian package: program it provides).
SYSTEM_PACKAGES := redis-server:redis-server prometheus:promtool chromium:chromium docker-compose:docker-compose

.PHONY: install system-packages serve test typecheck lint fuzz bench llama-server up down clean-venv

install: system-packages $(STAMP)

# Installs what is missing with apt-get when run as root; otherwise stops and prints the one command to run.
system-packages:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
		command -v "$${entry#*:}" >/dev/null 2>&1 || missing="$$missing $${entry%%:*}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing system packages the tests use:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "tandem needs these system packages:$$missing"; \
			echo "run:  sudo apt-get update && sudo apt-get install -y$$missing"; \
			echo "(or the same packages from your system's package manager), then run make again"; \
			exit 1; \
		fi; \
	fi

$(LLAMA_SDIST):
	@mkdir -p $(SDIST_DIR)
	$(PYTHON) -m pip download -q --no-deps --no-binary :all: -d $(SDIST_DIR) llama-cpp-python==$(LLAMA_CPP_VERSION)

$(STAMP): pyproject.toml Makefile $(LLAMA_SDIST)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	@mkdir -p $(WHEEL_CACHE)
	@if ! ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once into $(WHEEL_CACHE) (compiles llama.cpp: a few minutes)"; \
		CMAKE_ARGS="$(LLAMA_WHEEL_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir -w $(WHEEL_CACHE) \
			$(LLAMA_SDIST); \
	fi
	$(PIP) install -q $(FIND_LINKS) -e ".[dev,bench]"
	touch $(STAMP)

serve: install
	$(VENV)/bin/tandem serve $(ARGS)

# the type check first: it keeps the seams (backends.base and what the gateway calls on it) true
test: install
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q $(ARGS)

typecheck: install
	$(VENV)/bin/mypy

lint: install typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fuzz: install  # a longer schemathesis run than make test's (tests/test_fuzz.py): TANDEM_FUZZ_EXAMPLES=N
	TANDEM_FUZZ_EXAMPLES=$${TANDEM_FUZZ_EXAMPLES:-200} $(VENV)/bin/pytest -q -s tests/test_fuzz.py $(ARGS)

bench: install
	$(VENV)/bin/tandem bench throughput $(ARGS)

# `tandem bench serve`'s C++ anchor: llama.cpp's llama-server from the same vendored sources as the wheel,
# compiled once into ~/.cache/tandem/llama-server (minutes; LLAMA_SERVER_JOBS=N for more cores)
llama-server: $(LLAMA_SDIST)
	SDIST_DIR=$(SDIST_DIR) LLAMA_CPP_VERSION=$(LLAMA_CPP_VERSION) PYTHON=$(PYTHON) bench/build_llama_server.sh

up:  # the stack: gateway, redis, prometheus, grafana (add the GPU engine: docker-compose --profile prod up -d)
	docker-compose up -d

down:
	docker-compose down

clean-venv:
	rm -rf $(VENV)
