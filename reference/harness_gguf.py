"""GGUF blocks of every type the Rust reader dequantizes, written by the `gguf`
package's own writer (fixtures/gguf/blocks.gguf), with `gguf.quants.dequantize`'s
f32 values and the values they were quantized from (outputs/gguf_dequant.safetensors). Two tensors per type: values
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
    # the values the "quantized.*" tensors were made from (for the quantizer's test)
    expected["source"] = data
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in expected.items()},
              outputs / "gguf_dequant.safetensors")


UNET = "model.diffusion_model."
# each quantizable weight takes the next of these in turn
MODEL_TYPES = ["Q8_0", "Q4_0", "Q5_1", "Q4_1", "Q5_0"]


def quantize_checkpoint(checkpoint: dict, quantize) -> tuple[dict, dict]:
    """(GGUF tensors as (data, type), their dequantized f32 values): the
    weights `quantize(key)` picks in the next of MODEL_TYPES (rows of whole
    blocks only, as the converters do), other weights of 2+ dims in F16,
    the rest in F32."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    tensors, values, turn = {}, {}, 0
    for key in sorted(checkpoint):
        t = checkpoint[key].float().numpy()
        if quantize(key) and key.endswith(".weight") and t.ndim >= 2 and t.shape[-1] % 32 == 0:
            qtype = getattr(Q, MODEL_TYPES[turn % len(MODEL_TYPES)])
            turn += 1
            data = gguf.quants.quantize(t, qtype)
            tensors[key] = (data.view(np.uint8), qtype)
            values[key] = gguf.quants.dequantize(data, qtype).reshape(t.shape)
        elif t.ndim >= 2:
            tensors[key] = (t.astype(np.float16), Q.F16)
            values[key] = tensors[key][0].astype(np.float32)
        else:
            tensors[key] = (t, Q.F32)
            values[key] = t
    return tensors, values


def save_gguf(path: Path, arch: str, tensors: dict, strip: str = "") -> None:
    import gguf

    writer = gguf.GGUFWriter(path, arch=arch)
    for key, (data, qtype) in tensors.items():
        writer.add_tensor(key.removeprefix(strip), data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf_models(fixtures: Path, outputs: Path, tmp: Path) -> None:
    """tiny-sd1 as GGUF files, and diffusers' runs of their dequantized values:
    - gguf/tiny-sd1-unet.gguf: the UNet alone, keys without
      `model.diffusion_model.` (city96's ComfyUI-GGUF converter's form);
    - gguf/tiny-sd1.gguf: the whole LDM checkpoint (stable-diffusion.cpp's
      `-M convert` form), CLIP's weights quantized too.
    outputs/gguf_sd1.safetensors: final latents of StableDiffusionPipeline
    .from_single_file on the dequantized checkpoints (the UNet-only file's
    with the original CLIP and VAE), 4 Euler steps, CFG 7.5, 64x64, seed 0."""
    import torch
    from diffusers import StableDiffusionPipeline
    from harness_outputs import run_keeping_latents
    from safetensors.torch import load_file, save_file

    checkpoint = load_file(fixtures / "single-file" / "tiny-sd1.safetensors")
    out = fixtures / "gguf"
    unet_only = {k: v for k, v in checkpoint.items() if k.startswith(UNET)}
    tensors, unet_values = quantize_checkpoint(unet_only, lambda k: True)
    save_gguf(out / "tiny-sd1-unet.gguf", "sd1", tensors, strip=UNET)
    tensors, whole_values = quantize_checkpoint(
        checkpoint, lambda k: k.startswith(UNET) or k.startswith("cond_stage_model."))
    save_gguf(out / "tiny-sd1.gguf", "sd1", tensors)

    latents = {}
    prompt = "a red circle on a white background"
    for name, values in [("unet-only", {**checkpoint, **unet_values}), ("whole", whole_values)]:
        file = tmp / f"gguf-{name}.safetensors"
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in values.items()}, file)
        pipe = StableDiffusionPipeline.from_single_file(
            str(file), config=str(fixtures / "tiny-sd1"), local_files_only=True, safety_checker=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        latents[name], _ = run_keeping_latents(pipe, prompt, num_inference_steps=4, guidance_scale=7.5, height=64,
                                               width=64, generator=torch.Generator("cpu").manual_seed(0))
    save_file(latents, outputs / "gguf_sd1.safetensors")
