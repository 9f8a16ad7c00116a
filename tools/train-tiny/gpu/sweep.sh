#!/usr/bin/env bash
# Runs on the GPU machine, from the folder pack.sh made: every line of the
# runs file (NAME then train-tiny flags) trains at once, the runs dealt
# round-robin to the machine's GPUs, each logging to $OUT/NAME.log. LIMIT
# (seconds, default 540) stops them all. Paths in the runs file are read from
# the pack folder (`--init ../models/dsrs-tiny.gguf`, or a file copied in).
cd "$(dirname "$0")" || exit 1
python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('train-tiny.xz'), open('/tmp/train-tiny', 'wb'))" &&
    chmod +x /tmp/train-tiny
mkdir -p /tmp/lib
# The carried libraries only where the machine lacks them.
for lib in lib/*; do ldconfig -p | grep -q "$(basename "$lib")" || cp "$lib" /tmp/lib/; done
export LD_LIBRARY_PATH="/tmp/lib:/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv
gpus=$(nvidia-smi -L | wc -l)
index=0
while read -r name args; do
    [ -z "$name" ] && continue
    mkdir -p "/tmp/runs/$name"
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$((index % gpus)) timeout "${LIMIT:-540}" /tmp/train-tiny --device cuda \
        --out "/tmp/runs/$name/model.gguf" $args > "$OUT/$name.log" 2>&1 &
    index=$((index + 1))
done < "${1:-runs.txt}"
wait
grep -H -A7 "^held-out" "$OUT"/*.log
