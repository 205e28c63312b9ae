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
# The device tool carries at most 64 MiB with the checkout, which the fixtures alone pass:
# the binaries go compressed, with the few fixtures gpu-check.sh uses, in .gpu/ (ignored
# through .git/info/exclude, as are /reference/fixtures/ and .whl while the checkout's
# fixtures are taken out of the index for the call: docs/development.md, "GPU checks").
rm -rf .gpu && mkdir -p .gpu/fixtures/sd3 .gpu/fixtures/flux .gpu/fixtures/gguf .gpu/fixtures/upscale
tar -C target -cJf .gpu/bin.tar.xz gpu
F=reference/fixtures G=.gpu/fixtures
cp -r $F/images $F/tiny-sd1 $G/
cp -r $F/sd3/pipeline $G/sd3/
cp -r $F/flux/pipeline-schnell $G/flux/
cp $F/gguf/tiny-sd1.gguf $G/gguf/
cp $F/upscale/esrgan-x4.pth $F/upscale/compact-x4.safetensors $G/upscale/
mkdir -p $G/ip-adapter && cp -r $F/ip-adapter/image_encoder $F/ip-adapter/sd1-plain.safetensors \
  $F/ip-adapter/sd1-plus.safetensors $G/ip-adapter/
du -sh .gpu
