#!/usr/bin/env bash
# Builds llama.cpp with CUDA for sm_90 (H100, H200), one of two ways:
#
#   bash tools/gpu/build-llama.sh llama SOURCE BUILD [LLAMA_BENCH]  # llama-cpp-sys-2's
#       # tree as shared libraries: the binaries of `--features cuda-shared` load
#       # them by soname; with llama-cpp-python's tools/llama-bench folder, also
#       # llama-bench on them (benches/setup-peers.sh makes the CPU one)
#   bash tools/gpu/build-llama.sh peer SOURCE BUILD  # llama-bench and llama-batched-bench
#       # from llama-cpp-python's tree, static: the bench's peer
#
# Run by tools/gpu/pack.sh here (with the toolchain of cuda-toolchain.sh, so a
# device call spends no minutes building) and by on-device.sh on the GPU
# machine when the pack carries no build, so both build alike.
# JOBS sets the parallel jobs (default: one per core).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 llama|peer SOURCE BUILD [LLAMA_BENCH]" >&2
    exit 2
fi
what="$1" source="$2" build="$3"
jobs="${JOBS:-$(nproc)}"

flags=(-DCMAKE_BUILD_TYPE=Release
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DGGML_CUDA=ON -DGGML_CUDA_NCCL=OFF -DCMAKE_CUDA_ARCHITECTURES=90-real
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF)
command -v ninja >/dev/null && flags+=(-G Ninja)
# The toolchain of cuda-toolchain.sh is a PyPI layout that cmake finds only when told.
if [ -n "${CUDA_HOME:-}" ]; then
    flags+=(-DCUDAToolkit_ROOT="$CUDA_HOME" -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc")
fi

case "$what" in
llama)
    cmake -S "$source" -B "$build" "${flags[@]}" -DBUILD_SHARED_LIBS=ON -DGGML_OPENMP=ON \
        -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF
    cmake --build "$build" -j "$jobs"
    if [ -n "${4:-}" ]; then
        g++ -O2 -std=c++17 -I"$source/include" -I"$source/ggml/include" -I"$source/common" \
            -I"$source/vendor" "$4/llama-bench.cpp" "$4/main.cpp" -L"$build/bin" \
            -lllama-common -lllama -lggml -lggml-base -Wl,-rpath-link,"$build/bin" \
            -Wl,--allow-shlib-undefined \
            -o "$build/bin/llama-bench"
    fi
    ;;
peer)
    cmake -S "$source" -B "$build" "${flags[@]}" -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    cmake --build "$build" -j "$jobs" --target llama-bench llama-batched-bench
    ;;
*)
    echo "usage: $0 llama|peer SOURCE BUILD [LLAMA_BENCH]" >&2
    exit 2
    ;;
esac
