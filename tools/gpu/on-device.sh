#!/usr/bin/env bash
# Runs on the GPU machine (no Rust, no network), in the repository root, with
# the `.gpu/` folder that tools/gpu/pack.sh made here (specs/gpu.md).
#
#   bash tools/gpu/on-device.sh build [llama|peer]  # unpacks the carried CUDA builds, or
#                                   # starts them in the background
#                                   # (`llama`: ours only; `peer`: llama-bench only)
#   bash tools/gpu/on-device.sh wait    # waits for them (call again if it times out)
#   bash tools/gpu/on-device.sh suite [THREADS [TEST ARGS]]  # the suite, both backends on the GPU
#   bash tools/gpu/on-device.sh bench SHAPE WEIGHTS [bench flags]
#
# The builds (tools/gpu/build-llama.sh): llama.cpp as shared libraries with
# CUDA from llama-cpp-sys-2's own source (the binaries here link those
# libraries by name), and llama-bench/llama-batched-bench from
# llama-cpp-python's llama.cpp tree (the peer). pack.sh builds both into
# `.gpu-llama/` and `.gpu-peer/`; `build` builds here only what no call
# carried or what does not load.
set -u
cd "$(dirname "$0")/../.."
ROOT="$PWD"
# The pack: `.gpu` (tools/gpu/pack.sh, CUDA) or `.vulkan` (tools/vulkan/pack.sh).
GPU="$ROOT/${PACK:-.gpu}"
WORK=/tmp/dsrs-gpu
OUT="${OUT:-$WORK/out}"
mkdir -p "$WORK" "$OUT"

environment() {
    # Binaries were built with CARGO_MANIFEST_DIR=/work/main: let it be here.
    if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$ROOT" /work/main; fi
    # Carried system libraries only where the machine lacks them.
    mkdir -p "$WORK/lib"
    for lib in "$GPU"/lib/*; do
        ldconfig -p | grep -q "$(basename "$lib")" || cp "$lib" "$WORK/lib/"
    done
    # The Vulkan loader where the pack carries it and the machine lacks it,
    # and the NVIDIA driver's Vulkan ICD where the loader would not find it.
    if ls "$GPU"/debs/*.deb >/dev/null 2>&1 && ! ldconfig -p | grep -q libvulkan.so.1; then
        for deb in "$GPU"/debs/*.deb; do dpkg -x "$deb" /; done
        ldconfig
    fi
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -e "$icd" ]; then export VK_DRIVER_FILES="$icd"; fi
    export LD_LIBRARY_PATH="$WORK/llama/bin:$WORK/lib:/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
    export DSRS_SHARED_MODELS="$GPU/shared-models"
    mkdir -p "$WORK/bin"
    for binary in "$GPU"/bin/*.xz; do
        target="$WORK/bin/$(basename "$binary" .xz)"
        [ -x "$target" ] || {
            python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
                "$binary" "$target" && chmod +x "$target"
        }
    done
    # A carried llama-bench (the Vulkan pack's) is the bench's peer.
    if [ -x "$WORK/bin/llama-bench" ]; then
        mkdir -p "$WORK/peers/llama.cpp-build" && ln -sfn "$WORK/bin" "$WORK/peers/llama.cpp-build/bin"
    fi
    # llama-bench on our llama.cpp build (build-llama.sh), beside the peer's.
    if [ -x "$WORK/llama/bin/llama-bench" ]; then
        mkdir -p "$WORK/peers" && ln -sfn "$WORK/llama/bin" "$WORK/peers/llama-bench-same-build"
    fi
}

# start_build llama|peer SOURCE_PACK BUILD_DIR: the build pack.sh made and
# a call carried (`.gpu-llama/`, `.gpu-peer/`), where it loads here;
# otherwise builds from the carried source in the background
# (tools/gpu/build-llama.sh; ~9 minutes for both on 16 cores).
# Touches $WORK/llama.done or peer.done when done.
start_build() {
    local name="$1" source="$2" build="$WORK/$3"
    local carried="$ROOT/.gpu-$name/built-$name.tar.xz"
    local needed=bin/libllama.so.0
    [ "$name" = peer ] && needed=bin/llama-bench
    if [ -e "$carried" ]; then
        mkdir -p "$build"
        if python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
            "$carried" "$build" && [ -e "$build/$needed" ] &&
            ! LD_LIBRARY_PATH="$build/bin:$LD_LIBRARY_PATH" ldd "$build"/bin/* 2>&1 | grep "not found"; then
            echo "$name: carried build"
            touch "$WORK/$name.done"
            return
        fi
        echo "$name: the carried build does not unpack or load here; building"
    fi
    # Both sources: ours builds llama-bench from the peer's too.
    for tree in llama.cpp-sys llama.cpp-peer; do
        python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
            "$GPU/$tree.tar.xz" "$WORK"
    done
    local tree="$WORK/llama.cpp" bench=""
    [ -d "$WORK/peer/llama.cpp/tools/llama-bench" ] && bench="$WORK/peer/llama.cpp/tools/llama-bench"
    [ "$name" = peer ] && tree="$WORK/peer/llama.cpp" bench=""
    command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
    nvcc --version | tail -1
    setsid bash -c "bash '$ROOT/tools/gpu/build-llama.sh' $name '$tree' '$build' $bench && touch '$WORK/$name.done'" \
        >"$WORK/$name.log" 2>&1 </dev/null &
    echo "$name: build started"
}

case "${1:-}" in
build)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    environment
    what="${2:-all}"
    if [ "$what" = peer ]; then touch "$WORK/llama.done"; else start_build llama llama.cpp-sys llama; fi
    if [ "$what" = llama ]; then
        touch "$WORK/peer.done"
    else
        start_build peer llama.cpp-peer peer-build
        # `peer`: llama-bench with CUDA beside a Vulkan pack's own (not made the bench's peer).
        [ "$what" = peer ] ||
            { mkdir -p "$WORK/peers/llama.cpp-build" && ln -sfn "$WORK/peer-build/bin" "$WORK/peers/llama.cpp-build/bin"; }
    fi
    ;;
wait)
    for _ in $(seq 1 110); do
        [ -e "$WORK/llama.done" ] && [ -e "$WORK/peer.done" ] && break
        sleep 5
    done
    tail -n 2 "$WORK/llama.log" "$WORK/peer.log" 2>/dev/null
    [ -e "$WORK/llama.done" ] && [ -e "$WORK/peer.done" ] && echo "builds done"
    ;;
suite)
    # suite [THREADS [TEST ARGS…]]: the whole suite (or the tests the
    # arguments pick), THREADS test threads (default: one per core); errors
    # logged by llama.cpp and candle reach the log file.
    environment
    threads="${2:-$(nproc)}"
    shift $(($# < 2 ? $# : 2))
    log="$OUT/suite-$threads${1:+-picked}.log"
    ldd "$WORK/bin/suite" | grep -E "not found|llama|ggml|cuda|cublas|vulkan" || true
    DSRS_TEST_LOG=error "$WORK/bin/suite" --test-threads "$threads" "$@" >"$log" 2>&1
    echo "suite with $threads threads $*: exit $?"
    grep -E "^test result|FAILED|panicked|^failures|ERROR|CUDA error|abort|Vulkan error|VK_ERROR" "$log" | head -30
    grep -E "skip|CUDA|cuda|Vulkan" "$log" | sort | uniq -c | sort -rn | head -12
    ;;
bench)
    environment
    shape="$2"; weights="$3"; shift 3
    mkdir -p "$ROOT/target/dsrs-bench"
    "$WORK/bin/bench" --shape "$shape" --weights "$weights" --gpu --peers "$WORK/peers" "$@" 2>&1 |
        tee "$OUT/bench-$shape-$weights.log"
    cp "$ROOT"/target/dsrs-bench/results-*-gpu*.json "$OUT/" 2>/dev/null
    ;;
*)
    echo "usage: $0 build|wait|suite|bench SHAPE WEIGHTS [flags]" >&2
    exit 2
    ;;
esac
