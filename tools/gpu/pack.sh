#!/usr/bin/env bash
# Builds the CUDA binaries here and packs what the GPU machine needs into
# `.gpu/` (ignored by git; carried by the device tool): the test suite and the
# bench (stripped, gzipped), the llama.cpp sources to build there, the shared
# test models and the few system libraries the machine may lack.
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

# System libraries the binaries need beyond glibc and libstdc++, in case
# the GPU machine lacks them (used there only then).
for lib in libgomp.so.1 libssl.so.3 libcrypto.so.3; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" "$GPU/lib/"
done

REGISTRY="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-0.1.161 | tail -1)"
# Only the CPU and CUDA backends are built there: the others stay behind.
SKIP=()
for backend in sycl vulkan opencl hexagon cann metal webgpu zdnn zendnn openvino virtgpu; do
    SKIP+=(--exclude="llama.cpp/ggml/src/ggml-$backend")
done
tar cJf "$GPU/llama.cpp-sys.tar.xz" -C "$REGISTRY" "${SKIP[@]}" llama.cpp
PEER=target/peers/llama_cpp_python-0.3.36/vendor
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
du -sh "$GPU"/* | sort -h
