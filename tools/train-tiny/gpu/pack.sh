#!/usr/bin/env bash
# Builds train-tiny with CUDA here and packs it into `.gpu-train/` (ignored by
# git; carried by the device tool) with sweep.sh, for trying training
# settings side by side on a GPU machine that has no Rust (specs/tiny-model.md,
# "How the recipe was found"). Needs the toolchain of tools/gpu/cuda-toolchain.sh.
#
# Usage (repository root): bash tools/train-tiny/gpu/pack.sh RUNS_FILE
# then on the device: bash .gpu-train/sweep.sh runs.txt
set -euo pipefail
RUNS="${1:?a runs file: one line per run, NAME then train-tiny flags}"
runs="$(cat "$RUNS")"
TOOLCHAIN="${TOOLCHAIN:-target/cuda-13.0}"
[ -f "$TOOLCHAIN/env.sh" ] || bash tools/gpu/cuda-toolchain.sh "$TOOLCHAIN"
# shellcheck disable=SC1091
source "$TOOLCHAIN/env.sh"
CARGO_TARGET_DIR=target/gpu cargo build -p train-tiny --features cuda

PACK=.gpu-train
rm -rf "$PACK"
mkdir -p "$PACK/lib"
cp target/gpu/debug/train-tiny "$PACK/"
strip "$PACK/train-tiny"
xz -6 -T2 "$PACK/train-tiny"
for lib in libssl.so.3 libcrypto.so.3; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" "$PACK/lib/"
done
cp tools/train-tiny/gpu/sweep.sh "$PACK/"
printf '%s\n' "$runs" > "$PACK/runs.txt"
grep -qx '/.gpu-train/' .git/info/exclude 2>/dev/null || echo /.gpu-train/ >> .git/info/exclude
du -sh "$PACK"/*
