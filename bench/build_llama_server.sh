#!/usr/bin/env bash
# Builds llama.cpp's C++ llama-server once, into tandem's cache, from the llama.cpp sources vendored in the
# llama-cpp-python sdist the dev backend's wheel is built from: the benchmark's C++ anchor (what Ollama runs)
# then runs exactly the same ggml/llama.cpp code as the in-process backend. Nothing lands in the repo.
#
#   bench/build_llama_server.sh          # or: make llama-server
#   LLAMA_SERVER_JOBS=4 bench/build_llama_server.sh
#
# Prints the binary's path last. A second run with the binary present does nothing.
set -euo pipefail

VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
SDIST_DIR="${SDIST_DIR:-$CACHE/sdist}"
PREFIX="${LLAMA_SERVER_PREFIX:-$CACHE/llama-server}"
JOBS="${LLAMA_SERVER_JOBS:-2}"
PYTHON="${PYTHON:-python3}"
BIN="$PREFIX/bin/llama-server"

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

TARBALL="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
SRC="$SDIST_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    mkdir -p "$SDIST_DIR"
    if [ ! -f "$TARBALL" ]; then
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$SDIST_DIR" "llama-cpp-python==$VERSION"
    fi
    tar -xzf "$TARBALL" -C "$SDIST_DIR"
fi

# As the wheel (Makefile's LLAMA_WHEEL_CMAKE_ARGS): portable code, not tuned to this CPU, so the anchor and
# the in-process backend compile the same kernels. Static so the binary does not depend on the build tree.
# No web UI (it would be fetched from the network) and no HTTPS/curl: the benchmark talks plain HTTP locally.
BUILD="$PREFIX/build"
nice -n 10 cmake -S "$SRC" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TOOLS=ON
nice -n 10 cmake --build "$BUILD" --target llama-server -j "$JOBS"
mkdir -p "$PREFIX/bin"
cp "$BUILD/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
