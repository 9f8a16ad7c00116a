#!/usr/bin/env bash
# Builds the CUDA binaries here and packs what the GPU machine needs into
# `.gpu/` (ignored by git; carried by the device tool): the test suite and the
# bench (stripped, xz-compressed), the llama.cpp sources in case a carried
# build does not load there, the shared test models and the few system
# libraries the machine may lack; and llama.cpp built with CUDA
# (tools/gpu/build-llama.sh: about 17 minutes each on 2 cores the first
# time, kept in target/gpu-llama) in `.gpu-llama/` (ours) and `.gpu-peer/`
# (the peer's llama-bench).
# Needs the toolchain of tools/gpu/cuda-toolchain.sh (specs/gpu.md).
#
# Usage: bash tools/gpu/pack.sh [bench]   (from the repository root;
#        `bench` builds and packs the bench alone: no suite, no test models)
set -euo pipefail
ONLY="${1:-}"
cd "$(dirname "$0")/../.."

TOOLCHAIN="${TOOLCHAIN:-target/cuda-13.0}"
[ -f "$TOOLCHAIN/env.sh" ] || bash tools/gpu/cuda-toolchain.sh "$TOOLCHAIN"
# shellcheck disable=SC1091
source "$TOOLCHAIN/env.sh"
export CARGO_TARGET_DIR=target/gpu

[ "$ONLY" = bench ] || cargo test --features cuda-shared --no-run
cargo build --features cuda-shared --example bench

REGISTRY="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-0.1.161 | tail -1)"
PEER=target/peers/llama_cpp_python-0.3.36/vendor
bash tools/gpu/build-llama.sh llama "$REGISTRY/llama.cpp" target/gpu-llama/llama \
    "$PEER/llama.cpp/tools/llama-bench"
bash tools/gpu/build-llama.sh peer "$PEER/llama.cpp" target/gpu-llama/peer

GPU=.gpu
rm -rf "$GPU"
mkdir -p "$GPU/bin" "$GPU/lib"
if [ "$ONLY" != bench ]; then
    suite="$(ls -t target/gpu/debug/deps/suite-* | grep -v '\.d$' | head -1)"
    cp "$suite" "$GPU/bin/suite"
fi
cp target/gpu/debug/examples/bench "$GPU/bin/bench"
strip "$GPU"/bin/*
xz -9 -T2 "$GPU"/bin/*
# Each CUDA build travels in a pack of its own (22 MB each: with the suite
# they would pass the 64 MiB a device call carries), carried together by a
# call before the one that uses them.
for name in llama peer; do
    rm -rf ".gpu-$name"
    mkdir -p ".gpu-$name"
done
tar cJf .gpu-llama/built-llama.tar.xz -C target/gpu-llama/llama bin
tar cJf .gpu-peer/built-peer.tar.xz -C target/gpu-llama/peer bin/llama-bench

# System libraries the binaries need beyond glibc and libstdc++, in case
# the GPU machine lacks them (used there only then).
for lib in libgomp.so.1 libssl.so.3 libcrypto.so.3; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" "$GPU/lib/"
done

# Only the CPU and CUDA backends are built there: the others stay behind.
SKIP=()
for backend in sycl vulkan opencl hexagon cann metal webgpu zdnn zendnn openvino virtgpu; do
    SKIP+=(--exclude="llama.cpp/ggml/src/ggml-$backend")
done
tar cJf "$GPU/llama.cpp-sys.tar.xz" -C "$REGISTRY" "${SKIP[@]}" llama.cpp
tar cJf "$GPU/llama.cpp-peer.tar.xz" -C "$PEER" "${SKIP[@]}" \
    --exclude=llama.cpp/docs --exclude=llama.cpp/models --exclude=llama.cpp/media \
    --exclude=llama.cpp/tools/ui --exclude=llama.cpp/tests --exclude=llama.cpp/benches \
    --transform 's,^llama.cpp,peer/llama.cpp,' llama.cpp
if [ "$ONLY" = bench ]; then
    # The bench's models take deepseek-coder's vocabulary, as on the CPU (without
    # it they get the byte-level one, whose DSPy replies overrun the bench's budget).
    mkdir -p "$GPU/shared-models/vocab"
    cp "${DSRS_SHARED_MODELS:-../shared/models}/vocab/ggml-vocab-deepseek-coder-chat.gguf" \
        "$GPU/shared-models/vocab/"
else
    cp -r "${DSRS_SHARED_MODELS:-../shared/models}" "$GPU/shared-models"
fi
du -sh "$GPU"/* .gpu-llama .gpu-peer | sort -h
