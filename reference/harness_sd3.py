"""Stable Diffusion 3 / 3.5 parts, as they land: the 16-channel VAE (no
quant convs, a shift factor) as a tiny random model in the diffusers layout
(fixtures/sd3/vae), with its outputs (outputs/sd3_vae.safetensors): encode
mean/std, a seeded sample, decode, and the pipeline's latent scaling
`(z - shift_factor) * scaling_factor` and its inverse before decoding."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from harness_models import TINY_VAE, save_component, vae

TINY_VAE_SD3 = dict(TINY_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                    shift_factor=0.0609, scaling_factor=1.5305, force_upcast=True)


def write_sd3_vae(fixtures: Path, outputs: Path) -> None:
    folder = fixtures / "sd3" / "vae"
    save_component(vae(TINY_VAE_SD3, seed=5), folder)
    model = AutoencoderKL.from_pretrained(folder).eval()
    c = model.config
    gen = torch.Generator().manual_seed(25)
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    latents = torch.randn(2, 16, 16, 16, generator=gen)
    with torch.no_grad():
        dist = model.encode(image).latent_dist
        sample = dist.sample(generator=torch.Generator().manual_seed(26))
        # StableDiffusion3Img2ImgPipeline.prepare_latents / StableDiffusion3Pipeline's decode
        scaled = (sample - c.shift_factor) * c.scaling_factor
        decoded = model.decode(latents / c.scaling_factor + c.shift_factor).sample
    save_file({k: v.contiguous() for k, v in {
        "image": image, "mean": dist.mean, "std": dist.std, "sample": sample, "scaled": scaled,
        "latents": latents, "decoded": decoded,
    }.items()}, outputs / "sd3_vae.safetensors")
