#!/usr/bin/env bash
# Runs on the GPU machine: the whole Vulkan bench in the background, so that
# one device call starts it and short calls after it collect what is done
# (a call may run 10 minutes; the run takes longer).
#
#   bash tools/vulkan/bench-on-device.sh start    # starts it, returns at once
#   bash tools/vulkan/bench-on-device.sh collect [SECONDS]  # waits up to SECONDS,
#                                                 # copies logs and JSON to $OUT
#
# In order: a CUDA `llama-bench` built from the pack's peer source (niced, in
# the background, so the GPU runs keep the cores), the bench with llama.cpp
# on Vulkan beside the Vulkan `llama-bench` for the 0.5B shape (Q8_0, Q4_K)
# and the 8B shape (Q4_K), then the CUDA `llama-bench` on the same files
# with the bench's own settings (128-token prompt, 64 generated, 3 runs).
set -u
cd "$(dirname "$0")/../.."
WORK=/tmp/dsrs-gpu
LOGS="$WORK/vulkan-bench"
mkdir -p "$LOGS"
export PACK=.vulkan-bench

case "${1:-}" in
start)
    rm -f "$LOGS"/*.done
    setsid bash -c "
        nice -n 19 bash tools/gpu/on-device.sh build peer
        for run in 'qwen0.5b q8_0' 'qwen0.5b q4k' 'llama8b q4k'; do
            OUT=$LOGS bash tools/gpu/on-device.sh bench \$run --sequences 64 --clients 64 --runs 3 --bandwidth-gbs 4800
        done
        touch $LOGS/bench.done
        bash tools/gpu/on-device.sh wait >$LOGS/cuda-build.txt
        bash tools/gpu/on-device.sh wait >>$LOGS/cuda-build.txt
        for model in target/dsrs-bench/*.gguf; do
            echo \"== \$model\"
            $WORK/peer-build/bin/llama-bench -m \$model -ngl 999 -p 128 -n 64 -r 3 -t \$(nproc) -o json 2>&1
        done >$LOGS/llama-bench-cuda.json.txt
        touch $LOGS/all.done" >"$LOGS/run.log" 2>&1 </dev/null &
    echo started
    ;;
collect)
    for _ in $(seq 1 "${2:-1}"); do
        [ -e "$LOGS/all.done" ] && break
        sleep 1
    done
    ls "$LOGS"
    tail -n 5 "$LOGS/run.log"
    mkdir -p "${OUT:-/tmp/out}"
    cp "$LOGS"/* "${OUT:-/tmp/out}/" 2>/dev/null
    tail -n 2 "$WORK/peer.log" 2>/dev/null
    ;;
*)
    echo "usage: $0 start|collect [SECONDS]" >&2
    exit 2
    ;;
esac
