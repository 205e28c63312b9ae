#!/usr/bin/env bash
# What to run on a GPU machine (the device tool), from a tree built here with
#   cargo build --release -p sd-cli -p sd-benches --bin pipeline_timing && cargo test -p sd-core --no-run
# It needs only Python's torch on the machine, for its libraries.
set -u
TORCH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
export LD_LIBRARY_PATH="$TORCH/lib:$TORCH/../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
echo "== doctor"; ./target/release/sd doctor --device cuda
echo "== CUDA graph capture/replay unit test"
for t in target/debug/deps/sd_core-*; do [ -x "$t" ] && "$t" cuda_graph; done
echo "== shapes model on the GPU (eager, then CUDA graphs)"
./target/release/sd txt2img --prompt "a large blue triangle on a white background" --steps 20 --seed 0 --device cuda --out "${OUT:-.}/gpu.png"
./target/release/sd txt2img --prompt "a large blue triangle on a white background" --steps 20 --seed 0 --device cuda --cuda-graphs --out "${OUT:-.}/gpu-graphs.png"
echo "== timing (tiny shapes model; full size needs a random SD1.5 folder)"
./target/release/pipeline_timing --model models/shapes --device cuda --size 32 --steps 20 --runs 3
./target/release/pipeline_timing --model models/shapes --device cuda --size 32 --steps 20 --runs 3 --cuda-graphs
