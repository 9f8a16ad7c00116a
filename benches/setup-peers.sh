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
# llama-server is built with llguidance (LLAMA_LLGUIDANCE), so it accepts the
# crate's Lark grammars (`%llguidance`): the remote backend's tests run it
# (issue 26). llama.cpp's cmake clones llguidance from GitHub; here it builds
# the copy cargo keeps of the crate's own llguidance (crates.io), which ships
# the same C API (llguidance.h, a static library).
#
# Usage: bash benches/setup-peers.sh              (from the repository root)
#        bash benches/setup-peers.sh llama-server (that tool alone: the tests')
# Env:   PEERS_DIR (default target/peers), LLAMA_CPP_PYTHON_VERSION, JOBS.
set -u
ONLY="${1:-all}"

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
    # pip: the system's, else one in a venv of its own.
    PIP=(python3 -m pip)
    if ! python3 -m pip --version >/dev/null 2>&1; then
        python3 -m venv "$PEERS_DIR/pip-venv" && PIP=("$PEERS_DIR/pip-venv/bin/python" -m pip)
    fi
    "${PIP[@]}" download --no-binary :all: --no-deps \
        "llama-cpp-python==$VERSION" -d "$PEERS_DIR" ||
        { echo "setup-peers: cannot download llama-cpp-python; no peer can be built"; exit 1; }
fi
if [ ! -d "$SRC" ]; then
    tar xzf "$SDIST" -C "$PEERS_DIR"
fi

# llguidance's source where llama.cpp's cmake expects its clone, and the
# clone step removed (the network reaches package registries only).
LLG_SRC="$BUILD/llguidance/source"
LLG_MARK="$BUILD/llguidance/from-registry"
if [ ! -f "$LLG_MARK" ]; then
    step "llguidance source from cargo's registry"
    cargo fetch --quiet >/dev/null 2>&1 || true
    LLG_VERSION="$(awk '/^name = "llguidance"$/ {getline; print $3}' Cargo.lock | tr -d '"')"
    REGISTRY="${CARGO_HOME:-$HOME/.cargo}/registry"
    # Unpacked by an earlier build, else the downloaded .crate (a tar.gz;
    # `cargo fetch` downloads without unpacking).
    LLG_CRATE="$(ls -d "$REGISTRY"/src/*/"llguidance-$LLG_VERSION" 2>/dev/null | head -1)"
    LLG_ARCHIVE="$(ls "$REGISTRY"/cache/*/"llguidance-$LLG_VERSION.crate" 2>/dev/null | head -1)"
    if [ -z "$LLG_CRATE" ] && [ -n "$LLG_ARCHIVE" ]; then
        mkdir -p "$PEERS_DIR/llguidance-crate" &&
            tar xzf "$LLG_ARCHIVE" -C "$PEERS_DIR/llguidance-crate" &&
            LLG_CRATE="$PEERS_DIR/llguidance-crate/llguidance-$LLG_VERSION"
    fi
    if [ -n "$LLG_CRATE" ] && [ -d "$LLG_CRATE" ]; then
        rm -rf "$LLG_SRC" && mkdir -p "$(dirname "$LLG_SRC")" &&
            cp -r "$LLG_CRATE" "$LLG_SRC" &&
            printf '\n[workspace]\n' >>"$LLG_SRC/Cargo.toml" && # not ours
            sed -i -e '/GIT_REPOSITORY https:\/\/github.com\/guidance-ai\/llguidance/d' \
                -e 's/^\( *\)GIT_TAG [0-9a-f]*$/\1DOWNLOAD_COMMAND ""/' \
                "$SRC/vendor/llama.cpp/common/CMakeLists.txt" &&
            touch "$LLG_MARK"
    else
        echo "setup-peers: llguidance $LLG_VERSION is not in $REGISTRY; llama-server is built without it"
    fi
fi
LLG_FLAG="-DLLAMA_LLGUIDANCE=OFF"
[ -f "$LLG_MARK" ] && LLG_FLAG="-DLLAMA_LLGUIDANCE=ON"

TARGETS="llama-bench llama-server"
[ "$ONLY" = "llama-server" ] && TARGETS="llama-server"
missing=""
for t in $TARGETS; do [ -x "$BUILD/bin/$t" ] || missing="$missing $t"; done
# A build made before llguidance was at hand is made again with it.
LLG_BUILT="$BUILD/built-with-llguidance"
if [ -n "$missing" ] || { [ -f "$LLG_MARK" ] && [ ! -f "$LLG_BUILT" ]; }; then
    step "building $TARGETS ($JOBS jobs, $LLG_FLAG)"
    # shellcheck disable=SC2086
    cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
        $CPU_FLAGS $LLG_FLAG -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$PEERS_DIR/cmake-configure.log" 2>&1 &&
        cmake --build "$BUILD" -j "$JOBS" --target $TARGETS \
            >"$PEERS_DIR/cmake-build.log" 2>&1 &&
        { [ ! -f "$LLG_MARK" ] || touch "$LLG_BUILT"; } ||
        echo "setup-peers: llama.cpp tools failed to build (see $PEERS_DIR/cmake-*.log)"
fi
[ "$ONLY" = "llama-server" ] && { step "done: $(ls "$BUILD/bin" 2>/dev/null | tr '\n' ' ')"; exit 0; }

# llama-bench's source on the llama.cpp build the crate links (llama-cpp-sys-2's
# static libraries, from `cargo build`; the newest, where feature sets have
# made several): against the peer's llama-bench, the engine build's share of
# a gap; against our adapter, the rest.
SYS_BUILD="$(ls -td "${CARGO_TARGET_DIR:-target}"/debug/build/llama-cpp-sys-2-*/out/build 2>/dev/null | head -1)"
SAME="$PEERS_DIR/llama-bench-same-build/llama-bench"
if [ -z "$SYS_BUILD" ]; then
    echo "setup-peers: no llama-cpp-sys-2 build (run cargo build first); no llama-bench on our llama.cpp build"
elif [ ! -x "$SAME" ] || [ "$SYS_BUILD/src/libllama.a" -nt "$SAME" ]; then
    step "llama-bench on the crate's llama.cpp build"
    SYS_SRC="$(awk -F= '/^CMAKE_HOME_DIRECTORY:/ { print $2 }' "$SYS_BUILD/CMakeCache.txt")"
    rm -f "$SAME" # a failed build leaves none to measure
    mkdir -p "$(dirname "$SAME")" &&
        g++ -O2 -std=c++17 -I"$SYS_BUILD/../include" -I"$SYS_SRC/common" -I"$SYS_SRC/vendor" \
            "$SRC/vendor/llama.cpp/tools/llama-bench/llama-bench.cpp" \
            "$SRC/vendor/llama.cpp/tools/llama-bench/main.cpp" \
            -Wl,--start-group "$SYS_BUILD"/common/*.a "$SYS_BUILD"/vendor/*/*.a \
            "$SYS_BUILD"/src/libllama.a "$SYS_BUILD"/ggml/src/*.a -Wl,--end-group \
            -fopenmp -lpthread -lssl -lcrypto -o "$SAME" >"$PEERS_DIR/same-build.log" 2>&1 ||
        echo "setup-peers: llama-bench on our llama.cpp build failed (see $PEERS_DIR/same-build.log)"
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
