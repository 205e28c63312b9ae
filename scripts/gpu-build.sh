#!/usr/bin/env bash
# Builds, on this (CPU) machine, what scripts/gpu-check.sh runs on a lent GPU
# machine, into target/gpu/ (about 45 MB; the device tool carries it):
#   bash scripts/gpu-build.sh
#   device run: command "bash scripts/gpu-check.sh", carry ["target/gpu"], timeout_s 540
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p sd-cli -p sd-benches --bin sd --bin pipeline_timing
# The sd-core unit tests (CUDA graph capture/replay, peak-memory counters).
tests=$(cargo test --release -p sd-core --lib --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])')
mkdir -p target/gpu
cp target/release/sd target/release/pipeline_timing target/gpu/
cp "$tests" target/gpu/sd_core_tests
strip target/gpu/*
du -sh target/gpu
