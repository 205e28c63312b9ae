"""Weight error of each GGUF type on a full-size model's layer weights: every
quantizable weight of the UNet (rows of whole blocks, more than 1024 values,
as `sd convert` picks them) quantized and dequantized by the `gguf` package,
against the stored bf16 values: relative RMS error (RMS of the error over
RMS of the weight) and the largest error over the weight's largest value,
pooled over all weights.

    .venv/bin/python benches/quant_error.py ~/.cache/sd-rs/sdxl-random/unet [EVERY]

EVERY (default 8) takes every EVERY-th quantizable weight, in file order.

Random weights (normal draws) are harder to quantize than trained ones
(heavier tails relative to the block scale are rarer in trained weights),
so treat the figures as an upper bound for the types' relative order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors import safe_open

TYPES = ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]


def main() -> None:
    folder = Path(sys.argv[1])
    every = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    seen = 0
    files = sorted(folder.glob("*.safetensors"))
    sums = {t: [0.0, 0.0, 0.0] for t in TYPES}  # error^2, value^2, worst relative
    count = 0
    for file in files:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if not key.endswith(".weight") or t.dim() < 2 or t.shape[-1] % 32 or t.numel() <= 1024:
                    continue
                seen += 1
                if (seen - 1) % every:
                    continue
                values = t.float().numpy()
                count += 1
                for name in TYPES:
                    qtype = getattr(gguf.GGMLQuantizationType, name)
                    back = gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype).reshape(values.shape)
                    error = back - values
                    sums[name][0] += float((error.astype(np.float64) ** 2).sum())
                    sums[name][1] += float((values.astype(np.float64) ** 2).sum())
                    sums[name][2] = max(sums[name][2], float(np.abs(error).max() / np.abs(values).max()))
    print(f"{count} of {seen} quantizable weights of {folder}")
    print("| type | bits/value | relative RMS error | largest error / largest value |")
    print("| --- | --: | --: | --: |")
    for name in TYPES:
        per_block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, name)]
        e2, v2, worst = sums[name]
        print(f"| {name} | {8 * size / per_block:.2f} | {np.sqrt(e2 / v2):.2e} | {worst:.2e} |")


if __name__ == "__main__":
    main()
