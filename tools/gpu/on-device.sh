#!/usr/bin/env bash
# Runs on the GPU machine (no Rust, no network), in the repository root, with
# the `.gpu/` folder that tools/gpu/pack.sh made here (specs/gpu.md).
#
#   bash tools/gpu/on-device.sh build [llama|peer]  # starts the CUDA builds in the background
#                                   # (`llama`: ours only; `peer`: llama-bench only)
#   bash tools/gpu/on-device.sh wait    # waits for them (call again if it times out)
#   bash tools/gpu/on-device.sh suite [THREADS [TEST ARGS]]  # the suite, both backends on the GPU
#   bash tools/gpu/on-device.sh bench SHAPE WEIGHTS [bench flags]
#
# The builds: llama.cpp as shared libraries with CUDA from llama-cpp-sys-2's
# own source (the binaries here link those libraries by name), and
# llama-bench/llama-batched-bench/llama-quantize from llama-cpp-python's
# llama.cpp tree (the peer).
set -u
cd "$(dirname "$0")/../.."
ROOT="$PWD"
# The pack: `.gpu` (tools/gpu/pack.sh, CUDA) or `.vulkan` (tools/vulkan/pack.sh).
GPU="$ROOT/${PACK:-.gpu}"
WORK=/tmp/dsrs-gpu
OUT="${OUT:-$WORK/out}"
mkdir -p "$WORK" "$OUT"

CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
CUDA_FLAGS="-DGGML_CUDA=ON -DGGML_CUDA_NCCL=OFF -DCMAKE_CUDA_ARCHITECTURES=90"
GENERATOR=""
command -v ninja >/dev/null && GENERATOR="-G Ninja"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"

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
}

case "${1:-}" in
build)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nvcc --version | tail -2
    for source in "$GPU"/llama.cpp-*.tar.xz; do
        python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$source" "$WORK"
    done
    what="${2:-all}"
    # shellcheck disable=SC2086
    [ "$what" = peer ] || setsid bash -c "
        cmake -S $WORK/llama.cpp -B $WORK/llama $GENERATOR -DCMAKE_BUILD_TYPE=Release \
            -DBUILD_SHARED_LIBS=ON $CPU_FLAGS $CUDA_FLAGS -DGGML_OPENMP=ON \
            -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
            -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF &&
        cmake --build $WORK/llama -j 16 && touch $WORK/llama.done" >"$WORK/llama.log" 2>&1 </dev/null &
    if [ "$what" = llama ]; then
        echo "llama.cpp build started (no peer)"
        touch "$WORK/peer.done"
        exit 0
    fi
    # `peer`: llama-bench and llama-batched-bench with CUDA only, beside a
    # Vulkan pack's own (not made the bench's peer).
    link="mkdir -p $WORK/peers/llama.cpp-build && ln -sfn $WORK/peer-build/bin $WORK/peers/llama.cpp-build/bin"
    if [ "$what" = peer ]; then
        touch "$WORK/llama.done"
        link=true
    fi
    # shellcheck disable=SC2086
    setsid bash -c "
        cmake -S $WORK/peer/llama.cpp -B $WORK/peer-build $GENERATOR -DCMAKE_BUILD_TYPE=Release \
            -DBUILD_SHARED_LIBS=OFF $CPU_FLAGS $CUDA_FLAGS -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
            -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF &&
        cmake --build $WORK/peer-build -j 16 --target llama-bench llama-batched-bench llama-quantize &&
        $link && touch $WORK/peer.done" >"$WORK/peer.log" 2>&1 </dev/null &
    echo "builds started"
    ;;
wait)
    for _ in $(seq 1 110); do
        [ -e "$WORK/llama.done" ] && [ -e "$WORK/peer.done" ] && break
        sleep 5
    done
    tail -n 2 "$WORK/llama.log" "$WORK/peer.log"
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
