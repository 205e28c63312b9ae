"""Hires fix references composed from diffusers, as A1111 runs it: the tiny SD1 pipeline's
txt2img at 32x32 (`output_type="latent"`, or the decoded image), enlarged to 64x64 the way
each `hr_upscaler` does it (torch's `interpolate` on the latents for the "Latent" modes;
spandrel's Real-ESRGAN x2 on the decoded image, written as 8-bit, for an upscaler model;
Pillow's LANCZOS resize of the decoded image for "Lanczos"),
then diffusers' `StableDiffusionImg2ImgPipeline` given those latents (a 4-channel `image`)
or that image, at strength 0.6, with a generator seeded again with the run's seed. Euler,
4 steps in each pass, guidance 7.5, seed 3 (outputs/hires.safetensors: the second pass's
final latents per mode; and `pil.lanczos.WxH.image`, Pillow's LANCZOS resizes of
images/init-72x64.png, 8-bit). The same for the tiny SDXL pipeline with the "Latent" and
"Lanczos" modes (`sdxl-latent`, `sdxl-lanczos`: SDXL's img2img pipeline, whose size
conditioning is the enlarged image's), and the tiny SD2 (v-prediction) with "Latent"
(`sd2-latent`). Random weights draw noise."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

PROMPT = "a red circle on a white background"
RUN = dict(num_inference_steps=4, guidance_scale=7.5)
SEED, STRENGTH = 3, 0.6
LATENT_MODES = {
    "latent": dict(mode="bilinear", antialias=False),
    "latent-nearest-exact": dict(mode="nearest-exact"),
    "latent-bicubic-antialiased": dict(mode="bicubic", antialias=True),
}


def sd_pipelines(folder: Path):
    """A tiny SD1/SD2 folder's txt2img pipeline (Euler) and its img2img twin."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    return pipe, img2img


def passes(pipe, img2img):
    """The first pass (32x32, its latents or its image) and the second (the enlarged
    latents or image at STRENGTH), each with the run's seed."""
    def first(output_type):
        return pipe(PROMPT, height=32, width=32, generator=torch.Generator().manual_seed(SEED),
                    output_type=output_type, **RUN).images

    def second(image):
        return img2img(PROMPT, image=image, strength=STRENGTH, generator=torch.Generator().manual_seed(SEED),
                       output_type="latent", **RUN).images

    return first, second


def write_hires(fixtures: Path, outputs: Path) -> None:
    import numpy as np
    from PIL import Image
    from spandrel import ModelLoader

    pipe, img2img = sd_pipelines(fixtures / "tiny-sd1")
    first, second = passes(pipe, img2img)

    tensors = {}
    latents = first("latent")
    for name, mode in LATENT_MODES.items():
        size = (64 // pipe.vae_scale_factor,) * 2
        tensors[name] = second(torch.nn.functional.interpolate(latents, size=size, **mode))

    # an upscaler model on the decoded image (Real-ESRGAN x2: 32 -> 64, no resize after)
    from safetensors.torch import load_file

    state = {k.removeprefix("params_ema."): v for k, v in
             load_file(fixtures / "upscale" / "realesrgan-x2.safetensors").items()}
    upscaler = ModelLoader().load_from_state_dict(state).eval()
    [image] = first("pil")
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).unsqueeze(0).float() / 255
    with torch.no_grad():
        big = (upscaler(x) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    tensors["model"] = second(Image.fromarray(big))
    # A1111's "Lanczos": Pillow's LANCZOS resize of the decoded image
    tensors["lanczos"] = second(image.resize((64, 64), Image.LANCZOS))
    # Pillow's LANCZOS on its own (up, down, one axis), the arithmetic sd-pipeline copies
    photo = Image.open(fixtures / "images" / "init-72x64.png").convert("RGB")
    for w, h in [(100, 90), (31, 17), (72, 40), (7, 64)]:
        resized = np.asarray(photo.resize((w, h), Image.LANCZOS), dtype=np.uint8).copy()
        tensors[f"pil.lanczos.{w}x{h}.image"] = torch.from_numpy(resized)
    tensors.update(sdxl_hires(fixtures))
    # SD2 (v-prediction): "Latent" only; its second pass is SD1's code with SD2's model
    pipe, img2img = sd_pipelines(fixtures / "tiny-sd2")
    first, second = passes(pipe, img2img)
    latents = torch.nn.functional.interpolate(first("latent"), size=(64 // pipe.vae_scale_factor,) * 2,
                                              **LATENT_MODES["latent"])
    tensors["sd2-latent"] = second(latents)
    save_file({k: v.contiguous() for k, v in tensors.items()}, outputs / "hires.safetensors")
    # each key's model evaluations (two passes of 4 steps at most), for the error model
    runs = [{"key": key, "steps": 8, "dtype": "f32"} for key in tensors if not key.startswith("pil.")]
    (outputs / "hires.json").write_text(json.dumps(runs, indent=1) + "\n")


def sdxl_hires(fixtures: Path) -> dict[str, torch.Tensor]:
    """The tiny SDXL pipeline's hires fix, "Latent" and "Lanczos" (see the module's text)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from PIL import Image

    pipe = StableDiffusionXLPipeline.from_pretrained(fixtures / "tiny-sdxl")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    first, second = passes(pipe, img2img)
    size = (64 // pipe.vae_scale_factor,) * 2
    latents = torch.nn.functional.interpolate(first("latent"), size=size, **LATENT_MODES["latent"])
    [image] = first("pil")
    return {"sdxl-latent": second(latents), "sdxl-lanczos": second(image.resize((64, 64), Image.LANCZOS))}
