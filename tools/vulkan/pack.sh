#!/usr/bin/env bash
# Builds the Vulkan binaries here and packs what a GPU machine without Rust
# needs, in two folders (ignored by git; each carried by the device tool on
# its own, since a call carries 64 MiB with the repository):
#
#   .vulkan/        the test suite built `--features vulkan` (llama.cpp's
#                   Vulkan backend compiled in, shaders included) and the
#                   shared test models;
#   .vulkan-bench/  the bench built the same way, `llama-bench` and
#                   `llama-batched-bench` built for Vulkan from
#                   llama-cpp-python's llama.cpp tree (the bench's peer),
#                   and that tree's source, so that `on-device.sh build
#                   peer` can build both for CUDA there for the same files.
#
# Both hold the Vulkan loader and GL dispatch as Debian packages (unpacked
# there where missing) and the few system libraries the machine may lack.
# There: `PACK=.vulkan bash tools/gpu/on-device.sh suite 8`, and
# `bash tools/vulkan/bench-on-device.sh start` then `… collect 570` for the
# whole bench (specs/gpu.md, "Vulkan").
#
# Usage: bash tools/vulkan/pack.sh [bench]   (from the repository root;
#        `bench` builds and packs only .vulkan-bench)
set -euo pipefail
ONLY="${1:-}"
cd "$(dirname "$0")/../.."
dpkg -s libvulkan-dev glslc spirv-headers >/dev/null 2>&1 || apt-get install -y libvulkan-dev glslc spirv-headers
bash tools/vulkan/headers.sh
export CPLUS_INCLUDE_PATH="$PWD/target/vulkan-headers/include"
# CARGO_TARGET_DIR may name a folder of its own for the Vulkan build, so the
# CPU build in target/ is not rebuilt (a full build there instead).
BUILT="${CARGO_TARGET_DIR:-target}/debug"

# In the default target folder only llama.cpp and what links it rebuild.
[ "$ONLY" = bench ] || cargo test --features vulkan --no-run
cargo build --features vulkan --example bench

PEER=target/peers/llama_cpp_python-0.3.36/vendor/llama.cpp
[ -d "$PEER" ] || bash benches/setup-peers.sh
BUILD=target/peers/llama.cpp-vulkan
if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-batched-bench" ]; then
    # The CPU flags of benches/setup-peers.sh's build, and Vulkan.
    cmake -S "$PEER" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
        -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
        -DGGML_VULKAN=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >target/peers/vulkan-configure.log
    cmake --build "$BUILD" -j "$(nproc)" --target llama-bench llama-batched-bench >target/peers/vulkan-build.log
fi

# What both packs hold: libraries the binaries need beyond glibc and
# libstdc++, and the loader. NVIDIA's Vulkan driver (libGLX_nvidia) needs
# glvnd's dispatch library beside the loader.
COMMON=target/vulkan-common
rm -rf "$COMMON"
mkdir -p "$COMMON/lib" "$COMMON/debs"
for lib in libgomp.so.1 libssl.so.3 libcrypto.so.3; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" "$COMMON/lib/"
done
(cd "$COMMON/debs" && apt-get download libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2 >/dev/null)

pack() { # folder binaries…
    local folder="$1"
    shift
    rm -rf "$folder"
    mkdir -p "$folder/bin"
    cp -r "$COMMON/lib" "$COMMON/debs" "$folder/"
    for binary in "$@"; do
        cp "$binary" "$folder/bin/"
    done
    strip "$folder"/bin/*
    xz -9 -T2 "$folder"/bin/*
    grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >>.git/info/exclude
}

if [ "$ONLY" != bench ]; then
    suite="$(ls -t "$BUILT"/deps/suite-* | grep -v '\.d$' | head -1)"
    cp "$suite" target/suite
    pack .vulkan target/suite
    cp -r "${DSRS_SHARED_MODELS:-../shared/models}" .vulkan/shared-models
fi

pack .vulkan-bench "$BUILT/examples/bench" "$BUILD/bin/llama-bench" "$BUILD/bin/llama-batched-bench"
# The bench's models take deepseek-coder's vocabulary, as on the CPU (without
# it they get the byte-level one, whose DSPy replies overrun the bench's budget).
mkdir -p .vulkan-bench/shared-models/vocab
cp "${DSRS_SHARED_MODELS:-../shared/models}/vocab/ggml-vocab-deepseek-coder-chat.gguf" \
    .vulkan-bench/shared-models/vocab/
SKIP=()
for backend in sycl vulkan opencl hexagon cann metal webgpu zdnn zendnn openvino virtgpu; do
    SKIP+=(--exclude="llama.cpp/ggml/src/ggml-$backend")
done
tar cJf .vulkan-bench/llama.cpp-peer.tar.xz -C "$(dirname "$PEER")" "${SKIP[@]}" \
    --exclude=llama.cpp/docs --exclude=llama.cpp/models --exclude=llama.cpp/media \
    --exclude=llama.cpp/tools/ui --exclude=llama.cpp/tests --exclude=llama.cpp/benches \
    --transform 's,^llama.cpp,peer/llama.cpp,' llama.cpp
du -sh .vulkan*/ .vulkan*/* 2>/dev/null | sort -h || true
