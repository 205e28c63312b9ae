#!/usr/bin/env bash
# Regenerates the reference fixtures with diffusers into DIR, a copy of
# reference/ (the working tree is not touched):
#
#   bash scripts/regenerate-references.sh DIR
#
# reference/generate.py in three processes: the tokenizer and the tiny
# models first, then two lanes at once (single files and the pipeline
# outputs; adapters, TAESD, schedulers and manifests). Every process runs
# single-threaded, so the files are the ones one process would write; two
# lanes only use both cores. Logs: DIR.generate-*.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${1:?usage: regenerate-references.sh DIR (a copy of reference/)}"

generate() {
  local log="$dir.generate-$1.log"
  shift
  if ! OMP_NUM_THREADS=1 .venv/bin/python "$dir/generate.py" "$@" >"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "regenerate-references: generate.py $* failed ($log)" >&2
    return 1
  fi
}

generate models --only tokenizer --only models
generate outputs --only single-file --only outputs &
lane_a=$!
status=0
generate adapters --only lora --only controlnet --only taesd --only sizes --only sd3 --only schedulers --only manifests || status=1
wait "$lane_a" || status=1
find "$dir" -name __pycache__ -prune -exec rm -rf {} +
exit "$status"
