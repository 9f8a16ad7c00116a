#!/usr/bin/env bash
# Sets up the systems the benchmark compares dsrs-local with (issue 8):
#   - llama-bench and llama-server, built with cmake from the llama.cpp tree in
#     llama-cpp-python's PyPI source distribution (llama-cpp-sys-2 vendors
#     llama.cpp without the tools' sources);
#   - a Python venv with DSPy and llama-cpp-python[server], built from the
#     same source distribution.
# Everything lands under target/peers (nothing here is committed). Each step
# is skipped when its result exists; a failed step prints why and the others
# still run, so the benchmark can skip just that peer.
#
# Usage: bash benches/setup-peers.sh        (from the repository root)
# Env:   PEERS_DIR (default target/peers), LLAMA_CPP_PYTHON_VERSION, JOBS.
set -u

PEERS_DIR="${PEERS_DIR:-target/peers}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$PEERS_DIR"
PEERS_DIR="$(cd "$PEERS_DIR" && pwd)"
SDIST="$PEERS_DIR/llama_cpp_python-$VERSION.tar.gz"
SRC="$PEERS_DIR/llama_cpp_python-$VERSION"
BUILD="$PEERS_DIR/llama.cpp-build"
VENV="$PEERS_DIR/venv"

# The same instruction set as the crate's build (.cargo/config.toml:
# x86-64-v3), so the peers and llama-cpp-sys-2 run the same kernels.
CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"

step() { echo "== setup-peers: $*"; }

if [ ! -f "$SDIST" ]; then
    step "downloading llama-cpp-python $VERSION source distribution"
    python3 -m pip download --no-binary :all: --no-deps \
        "llama-cpp-python==$VERSION" -d "$PEERS_DIR" ||
        { echo "setup-peers: cannot download llama-cpp-python; no peer can be built"; exit 1; }
fi
if [ ! -d "$SRC" ]; then
    tar xzf "$SDIST" -C "$PEERS_DIR"
fi

if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-server" ]; then
    step "building llama-bench and llama-server ($JOBS jobs)"
    # shellcheck disable=SC2086
    cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
        $CPU_FLAGS -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$PEERS_DIR/cmake-configure.log" 2>&1 &&
        cmake --build "$BUILD" -j "$JOBS" --target llama-bench llama-server \
            >"$PEERS_DIR/cmake-build.log" 2>&1 ||
        echo "setup-peers: llama.cpp tools failed to build (see $PEERS_DIR/cmake-*.log)"
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import dspy, llama_cpp.server" 2>/dev/null; then
    step "installing DSPy and llama-cpp-python[server] into $VENV"
    python3 -m venv "$VENV" &&
        CMAKE_ARGS="$CPU_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
            "$VENV/bin/pip" install --quiet "$SDIST[server]" dspy \
            >"$PEERS_DIR/pip.log" 2>&1 ||
        echo "setup-peers: the Python peer failed to install (see $PEERS_DIR/pip.log)"
fi

step "done: $(ls "$BUILD/bin" 2>/dev/null | tr '\n' ' ')"
