# syntax=docker/dockerfile:1
# tandem, dev image: the gateway with llama.cpp in-process on the CPU, serving config/tandem.yaml
# (the generated demo model until you point it at a GGUF). docker-compose.yml builds it as tandem:dev.
#
#   docker build -t tandem:dev .
#   docker run -p 8000:8000 -v tandem-cache:/home/tandem/.cache/tandem tandem:dev
#
# Another config: mount it and set TANDEM_CONFIG (e.g. -v $PWD/my.yaml:/etc/tandem/tandem.yaml:ro
# -e TANDEM_CONFIG=/etc/tandem/tandem.yaml). Models and the demo model live under ~/.cache/tandem.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- stage 1: llama-cpp-python compiles llama.cpp (minutes); build the wheel where the compilers are ----
FROM ${PYTHON_IMAGE} AS llama-wheel
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
# Portable build (no -march=native), as the Makefile does: the image must run on CPUs other than the builder's.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
# Same pin as pyproject.toml and the Makefile's LLAMA_CPP_VERSION.
ARG LLAMA_CPP_VERSION=0.3.36
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels "llama-cpp-python==${LLAMA_CPP_VERSION}"

# ---- stage 2: the runtime image (no compilers) ----
FROM ${PYTHON_IMAGE}
# libgomp1: llama.cpp's OpenMP runtime.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch first, the Makefile's pin (the default PyPI wheel brings gigabytes of CUDA libraries the dev
# image never uses); `pip install .` then keeps it, since it satisfies pyproject's torch>=2.4.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY --from=llama-wheel /wheels /wheels
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY backends ./backends
COPY kernels ./kernels
COPY bench ./bench
RUN pip install --find-links /wheels . \
 && rm -rf /wheels
# `tandem serve` reads config/tandem.yaml from its working directory.
COPY config/tandem.yaml ./config/tandem.yaml

# An unprivileged user; ~/.cache/tandem (generated demo model, downloaded models) is the volume to keep.
RUN useradd --create-home --uid 10001 tandem \
 && mkdir -p /home/tandem/.cache/tandem \
 && chown -R tandem:tandem /home/tandem/.cache
USER tandem
ENV TANDEM_PROFILE=dev

EXPOSE 8000
# /health answers 200 once every configured model can serve (the first start generates the demo model).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["tandem", "serve", "--host", "0.0.0.0", "--port", "8000"]
