#!/usr/bin/env bash
# Trains the LoRA fixture reference/fixtures/lora-trained/sd1-trained.safetensors with
# `sd train --lora --lora-text-encoder` on the tiny SD1 model (four plain-colour images), so that the
# reference harness (reference/harness_lora.py, case "sd1.trained") can check that
# diffusers' load_lora_weights reads what this project's trainer writes. Rerun only
# when the trainer's file format changes; then rerun `reference/generate.py --only lora`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
.venv/bin/python - "$data" <<'PY'
import sys
from PIL import Image
colours = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "yellow": (255, 255, 0)}
for i, (name, rgb) in enumerate(colours.items()):
    Image.new("RGB", (64, 64), rgb).save(f"{sys.argv[1]}/{i}.png")
    open(f"{sys.argv[1]}/{i}.txt", "w").write(f"a {name} square\n")
PY
OMP_NUM_THREADS=1 cargo run --release -q -p sd-cli -- train --model reference/fixtures/tiny-sd1 \
  --data "$data" --lora 4 --lora-text-encoder --steps 60 --batch-size 4 --lr 1e-2 --resolution 64 --seed 0 --out "$data/out"
mkdir -p reference/fixtures/lora-trained
cp "$data/out/lora.safetensors" reference/fixtures/lora-trained/sd1-trained.safetensors
