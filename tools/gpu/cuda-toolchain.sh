#!/usr/bin/env bash
# A CUDA 13.0 toolchain for building `--features cuda-shared` on a machine
# with no GPU and no CUDA install (specs/gpu.md): nvcc, headers and cudart
# from NVIDIA's PyPI wheels, plus link-only stub libraries for the driver,
# cuBLAS, cuBLASLt, cuRAND and NVRTC (the GPU machine has the real ones),
# and cuBLAS's headers and libraries, against which tools/gpu/build-llama.sh
# builds llama.cpp here.
# Pinned to 13.0: newer nvcc writes PTX that a 13.0 driver cannot load.
#
# Usage: bash tools/gpu/cuda-toolchain.sh [DIR]   (default target/cuda-13.0)
# then:  source DIR/env.sh
set -euo pipefail

DIR="${1:-target/cuda-13.0}"
mkdir -p "$DIR/wheels"
DIR="$(cd "$DIR" && pwd)"
ROOT="$DIR/root/nvidia/cu13"

if [ ! -x "$ROOT/bin/nvcc" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR/wheels" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    for wheel in "$DIR"/wheels/*.whl; do
        python3 -m zipfile -e "$wheel" "$DIR/root"
    done
    chmod +x "$ROOT"/bin/* "$ROOT"/nvvm/bin/* 2>/dev/null || true
fi
if [ ! -e "$ROOT/include/cublas_v2.h" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR/wheels" \
        nvidia-cublas==13.0.2.14
    python3 -m zipfile -e "$DIR"/wheels/nvidia_cublas-*.whl "$DIR/root"
fi
ln -sf libcudart.so.13 "$ROOT/lib/libcudart.so"
ln -sf libcublas.so.13 "$ROOT/lib/libcublas.so"
ln -sf libcublasLt.so.13 "$ROOT/lib/libcublasLt.so"
# nvcc links device code from $ROOT/lib64, where a toolkit install keeps it.
ln -sfn lib "$ROOT/lib64"

# Stubs: every function cudarc's bindings declare, under the real soname.
CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)"
mkdir -p "$ROOT/lib/stubs"
stub() { # module soname file
    local names="$DIR/$1.names"
    grep -oE '^pub unsafe fn [A-Za-z0-9_]+' "$CUDARC/src/$1/sys/mod.rs" | awk '{print $4}' | sort -u >"$names"
    awk '{print "void " $1 "(void) {}"}' "$names" >"$DIR/$1.c"
    gcc -shared -fPIC -w -Wl,-soname,"$2" -o "$ROOT/lib/stubs/$3" "$DIR/$1.c"
}
stub driver libcuda.so.1 libcuda.so
stub cublas libcublas.so.13 libcublas.so
stub cublaslt libcublasLt.so.13 libcublasLt.so
stub curand libcurand.so.10 libcurand.so
stub nvrtc libnvrtc.so.13 libnvrtc.so

cat >"$DIR/env.sh" <<ENV
export PATH="$ROOT/bin:\$PATH"
export NVCC="$ROOT/bin/nvcc" CUDA_HOME="$ROOT" CUDA_PATH="$ROOT" CUDA_ROOT="$ROOT"
export CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=90
export LIBRARY_PATH="$ROOT/lib:$ROOT/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
ENV
echo "CUDA toolchain ready: source $DIR/env.sh"
"$ROOT/bin/nvcc" --version | tail -2
