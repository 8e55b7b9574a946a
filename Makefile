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

.PHONY: install serve test lint bench up down clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	@mkdir -p $(WHEEL_CACHE)
	@if ! ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once into $(WHEEL_CACHE) (compiles llama.cpp: a few minutes)"; \
		CMAKE_ARGS="$(LLAMA_WHEEL_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir -w $(WHEEL_CACHE) \
			llama-cpp-python==$(LLAMA_CPP_VERSION); \
	fi
	$(PIP) install -q $(FIND_LINKS) -e ".[dev]"
	touch $(STAMP)

serve: install
	$(VENV)/bin/tandem serve $(ARGS)

test: install
	$(VENV)/bin/pytest -q $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(VENV)/bin/tandem bench throughput $(ARGS)

up:  # the stack: gateway, redis, prometheus, grafana (add the GPU engine: docker-compose --profile prod up -d)
	docker-compose up -d

down:
	docker-compose down

clean-venv:
	rm -rf $(VENV)
