"""GGUF blocks of every type the Rust reader dequantizes, written by the `gguf`
package's own writer (fixtures/gguf/blocks.gguf), with `gguf.quants.dequantize`'s
f32 values (outputs/gguf_dequant.safetensors). Two tensors per type: values
quantized by `gguf.quants.quantize` from seeded data with edge rows (zeros,
one large value, tiny values, negatives), and raw random blocks (any bytes
are a block; their f16 scales drawn finite) so every bit pattern of the
quants is decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# gguf quantizes none of the K-quants: their tensors are the raw random blocks only
K_QUANTS = {"Q2_K": 80, "Q3_K": 108, "Q4_K": 0, "Q5_K": 0, "Q6_K": 208}


def write_gguf(fixtures: Path, outputs: Path) -> None:
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(40)
    data = rng.standard_normal((6, 64)).astype(np.float32)
    data[0] = 0.0
    data[1, 5] = 300.0
    data[2] *= 1e-4
    data[3] = -np.abs(data[3])
    out = fixtures / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out / "blocks.gguf", arch="sd-rs-test")
    writer.add_string("general.name", "sd-rs dequantization blocks")
    expected = {}
    for name in TYPES:
        qtype = getattr(Q, name)
        if name not in K_QUANTS:
            quantized = gguf.quants.quantize(data, qtype)
            # (bytes in, the type's element shape found from them)
            writer.add_tensor(f"quantized.{name}", quantized.view(np.uint8), raw_dtype=qtype)
            expected[f"quantized.{name}"] = gguf.quants.dequantize(quantized, qtype).reshape(data.shape)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        if block == 1:
            continue
        raw = rng.integers(0, 256, size=(16, size), dtype=np.uint8)
        # finite f16 scales (and minimums): at the front of each block, or
        # for the K-quants where K_QUANTS says (Q4_K/Q5_K: d and dmin first)
        at = K_QUANTS.get(name, 0)
        scales = 2 if name in ("Q4_0", "Q5_0", "Q8_0", "Q3_K", "Q6_K") else 4
        raw[:, at:at + scales] = rng.standard_normal((16, scales // 2)).astype(np.float16).view(np.uint8)
        raw = raw.reshape(2, -1)
        shape = (2, 8 * block)
        writer.add_tensor(f"raw.{name}", raw, raw_dtype=qtype)
        expected[f"raw.{name}"] = gguf.quants.dequantize(raw, qtype).reshape(shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in expected.items()},
              outputs / "gguf_dequant.safetensors")
