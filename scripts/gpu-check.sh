#!/usr/bin/env bash
# The GPU checks of issue 7, in one call on a lent machine (it has Python's
# torch for the libraries, no Rust, no diffusers). Build first, here:
#   bash scripts/gpu-build.sh
# then run `bash scripts/gpu-check.sh` there, carrying target/gpu. Writes
# images and timings.jsonl under $OUT. About 4-6 minutes on an H100.
set -u
cd "$(dirname "$0")/.."
TORCH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
export LD_LIBRARY_PATH="$TORCH/lib:$TORCH/../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
B=target/gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date -u

echo "== sd doctor"
$B/sd doctor --device cuda
echo "== sd-core CUDA unit tests (graph capture/replay, peak-memory counters)"
$B/sd_core_tests cuda --test-threads 1

echo "== shapes model: eager and CUDA-graph runs must give the same image"
P="a large blue triangle on a white background"
$B/sd txt2img --prompt "$P" --steps 20 --seed 0 --device cuda --out "$OUT/eager.png"
$B/sd txt2img --prompt "$P" --steps 20 --seed 0 --device cuda --cuda-graphs --out "$OUT/graphs.png"
cmp "$OUT/eager.png" "$OUT/graphs.png" && echo "identical PNGs"
# A stochastic sampler: its noise is uploaded each step without a host wait.
$B/sd txt2img --prompt "$P" --steps 20 --seed 0 --device cuda --scheduler euler-a --out "$OUT/eager-a.png"
$B/sd txt2img --prompt "$P" --steps 20 --seed 0 --device cuda --scheduler euler-a --cuda-graphs --out "$OUT/graphs-a.png"
cmp "$OUT/eager-a.png" "$OUT/graphs-a.png" && echo "identical PNGs (euler-a)"
echo "== img2img and inpaint on the GPU (image latents and CPU-drawn noise meet on the device)"
I=reference/fixtures/images
$B/sd img2img --prompt "$P" --steps 8 --seed 0 --device cuda --dtype f16 --init-image $I/init.png --strength 0.6 --out "$OUT/img2img.png"
$B/sd inpaint --model reference/fixtures/tiny-sd1-inpaint --prompt x --steps 4 --seed 0 --device cuda --dtype f16 \
  --init-image $I/init.png --mask $I/mask.png --out "$OUT/inpaint.png"

echo "== SD1.5 architecture, random weights, 512x512, 50 Euler steps, CFG, f16"
M=/tmp/sd15-random-rs
time_it() {
  $B/pipeline_timing --random-sd15 "$M" --device cuda --dtype f16 --size 512 --steps 50 \
    --sampler "${SAMPLER:-euler}" "$@" >>"$OUT/timings.jsonl" || echo "FAILED: $*"
}
time_it --runs 3
time_it --runs 3 --cuda-graphs
time_it --runs 3 --channels-last
time_it --runs 3 --cuda-graphs --channels-last
time_it --runs 2 --batch 4
time_it --runs 2 --batch 4 --cuda-graphs
time_it --runs 1 --low-memory
time_it --runs 1 --low-memory --cuda-graphs
SAMPLER=euler-a time_it --runs 2 --cuda-graphs
python3 - "$OUT/timings.jsonl" <<'PY'
import json, sys
print(f"{'settings':<52}{'steps/s':>8}{'step ms':>9}{'image s':>9}{'vae s':>7}{'peak GiB':>9}")
for line in open(sys.argv[1]):
    d = json.loads(line)
    best = min(d["runs"], key=lambda r: r["end_to_end_s"])
    settings = d["settings"].split("--steps 50")[-1].replace("--sampler euler ", "").strip() or "eager"
    print(f"{settings:<52}{d['steps_per_s']:>8.1f}{1000 / d['steps_per_s']:>9.2f}"
          f"{best['end_to_end_s']:>9.3f}{best['vae_decode_s']:>7.3f}{d.get('peak_memory_gib', float('nan')):>9.2f}"
          f"  {best['unet_execution']}")
PY
