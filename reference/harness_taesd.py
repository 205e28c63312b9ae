"""Tiny autoencoder (TAESD) references.

Writes a random AutoencoderTiny that fits the tiny models (4 latent
channels, one 2x upsampling) under fixtures/taesd/: as a diffusers folder
(tiny-taesd/) and in the original release's layout (original/
taesd_encoder.safetensors and taesd_decoder.safetensors: bare Sequential
indices, the decoder's shifted by its parameter-free clamp), and
outputs/taesd.{safetensors,json}: its encode of the init image and decode
of fixed latents, and txt2img with StableDiffusionPipeline and
StableDiffusionXLPipeline given vae=AutoencoderTiny (final latents and the
decoded image). Random weights: the images are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import save_file

from harness_outputs import run_keeping_latents

PROMPT = "a red circle on a white background"


def tiny_taesd(seed: int) -> AutoencoderTiny:
    torch.manual_seed(seed)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 2), num_decoder_blocks=(2, 1))


def write_taesd(fixtures: Path, outputs: Path) -> None:
    folder = fixtures / "taesd"
    vae = tiny_taesd(40).eval()
    vae.save_pretrained(folder / "tiny-taesd")
    original = folder / "original"
    original.mkdir(parents=True, exist_ok=True)
    state = vae.state_dict()
    encoder = {k.removeprefix("encoder.layers."): v.contiguous() for k, v in state.items() if k.startswith("encoder.")}
    decoder = {}
    for k, v in state.items():
        if k.startswith("decoder.layers."):
            index, rest = k.removeprefix("decoder.layers.").split(".", 1)
            decoder[f"{int(index) + 1}.{rest}"] = v.contiguous()
    save_file(encoder, original / "taesd_encoder.safetensors")
    save_file(decoder, original / "taesd_decoder.safetensors")

    tensors, runs = {}, []
    init = np.asarray(Image.open(fixtures / "images" / "init.png").convert("RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(init).permute(2, 0, 1)[None] * 2 - 1
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(41))
    with torch.no_grad():
        tensors["encode.input"] = image.contiguous()
        tensors["encode"] = vae.encode(image).latents
        tensors["decode.input"] = latents
        tensors["decode"] = vae.decode(latents).sample
    for key, cls, model, guidance in [("sd1.txt2img", StableDiffusionPipeline, "tiny-sd1", 7.5),
                                      ("sdxl.txt2img", StableDiffusionXLPipeline, "tiny-sdxl", 5.0)]:
        extra = {} if "xl" in model else dict(safety_checker=None)
        pipe = cls.from_pretrained(fixtures / model, vae=vae, **extra)
        pipe.set_progress_bar_config(disable=True)
        final, picture = run_keeping_latents(pipe, PROMPT, num_inference_steps=4, guidance_scale=guidance,
                                             height=64, width=64, generator=torch.Generator("cpu").manual_seed(0))
        tensors[key], tensors[f"{key}.image"] = final, picture
        runs.append(dict(key=key, model=model, prompt=PROMPT, seed=0, steps=4, guidance_scale=guidance,
                         height=64, width=64))
    save_file(tensors, outputs / "taesd.safetensors")
    (outputs / "taesd.json").write_text(json.dumps(runs, indent=1) + "\n")
