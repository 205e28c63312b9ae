"""Sizes that are not multiples of the UNet's downsampling: every size diffusers
accepts (a multiple of 8), here 72x64 (width x height), through the txt2img,
img2img and ControlNet pipelines of the tiny SD1, SD2 and SDXL models; and
the UNets alone on odd latent sizes, where diffusers forwards the skip
connections' sizes to the upsamplers (`forward_upsample_size`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import save_file

from harness_outputs import run_keeping_latents

WIDTH, HEIGHT = 72, 64
PROMPT = "a red circle on a white background"


def sized_image(fixtures: Path, source: str, name: str) -> str:
    """`source` resized (PIL Lanczos) to WIDTH x HEIGHT, saved as `name` under
    fixtures/images: both pipelines then read an image of the output size,
    which neither resizes."""
    image = Image.open(fixtures / source).convert("RGB").resize((WIDTH, HEIGHT), Image.LANCZOS)
    image.save(fixtures / "images" / name)
    return f"images/{name}"


def write_unet_sizes(fixtures: Path, tensors: dict) -> None:
    """One odd latent size per UNet: 9x7 goes down to 5x4 (and 3x2 for SDXL's
    three blocks), so each upsampler must land on its skip's size."""
    for prefix, folder in [("sd1", "tiny-sd1"), ("sd2", "tiny-sd2"), ("sdxl", "tiny-sdxl")]:
        model = UNet2DConditionModel.from_pretrained(fixtures / folder / "unet").eval()
        c = model.config
        gen = torch.Generator().manual_seed(40)
        sample = torch.randn(1, c.in_channels, 9, 7, generator=gen)
        context = torch.randn(1, 77, c.cross_attention_dim, generator=gen)
        inputs = {"sample": sample, "encoder_hidden_states": context}
        kwargs = {}
        if c.addition_embed_type == "text_time":
            inputs["text_embeds"] = torch.randn(1, 8, generator=gen)
            inputs["time_ids"] = torch.tensor([[64.0, 72, 0, 0, 64, 72]])
            kwargs["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
        with torch.no_grad():
            out = model(sample, 500, context, **kwargs).sample
        for key, value in dict(inputs, out=out).items():
            tensors[f"unet.{prefix}.{key}"] = value.contiguous()


def write_sizes(fixtures: Path, outputs: Path) -> None:
    tensors, runs = {}, []
    write_unet_sizes(fixtures, tensors)
    init = sized_image(fixtures, "images/init.png", "init-72x64.png")
    control = sized_image(fixtures, "controlnet/control-a.png", "control-a-72x64.png")
    net = {name: ControlNetModel.from_pretrained(fixtures / "controlnet" / name) for name in ("sd1-a", "sdxl-a")}
    plain = dict(safety_checker=None)
    # (key, pipeline class, model folder, from_pretrained extras, call extras, run fields)
    cases = [
        ("sd1.txt2img", StableDiffusionPipeline, "tiny-sd1", plain, {}, {}),
        ("sd2.txt2img", StableDiffusionPipeline, "tiny-sd2", plain, {}, {}),
        ("sdxl.txt2img", StableDiffusionXLPipeline, "tiny-sdxl", {}, {}, {}),
        ("sd1.img2img", StableDiffusionImg2ImgPipeline, "tiny-sd1", plain,
         dict(image=Image.open(fixtures / init), strength=0.75), dict(init_image=init, strength=0.75)),
        ("sdxl.img2img", StableDiffusionXLImg2ImgPipeline, "tiny-sdxl", {},
         dict(image=Image.open(fixtures / init), strength=0.75), dict(init_image=init, strength=0.75)),
        ("sd1.controlnet", StableDiffusionControlNetPipeline, "tiny-sd1", dict(plain, controlnet=net["sd1-a"]),
         dict(image=Image.open(fixtures / control)), dict(controlnets=["controlnet/sd1-a"], control_images=[control])),
        ("sdxl.controlnet", StableDiffusionXLControlNetPipeline, "tiny-sdxl", dict(controlnet=net["sdxl-a"]),
         dict(image=Image.open(fixtures / control)), dict(controlnets=["controlnet/sdxl-a"], control_images=[control])),
    ]
    for key, cls, model, load, call, fields in cases:
        pipe = cls.from_pretrained(fixtures / model, **load)
        pipe.set_progress_bar_config(disable=True)
        guidance = 5.0 if "xl" in model else 7.5
        size = {} if "init_image" in fields else dict(width=WIDTH, height=HEIGHT)
        latents, image = run_keeping_latents(pipe, PROMPT, num_inference_steps=4, guidance_scale=guidance,
                                             generator=torch.Generator("cpu").manual_seed(0), **size, **call)
        assert image.shape[:2] == (HEIGHT, WIDTH), f"{key}: {tuple(image.shape)}"
        tensors[key], tensors[f"{key}.image"] = latents, image
        runs.append(dict(key=key, model=model, prompt=PROMPT, seed=0, steps=4, guidance_scale=guidance,
                         width=WIDTH, height=HEIGHT, **fields))
    save_file(tensors, outputs / "sizes.safetensors")
    (outputs / "sizes.json").write_text(json.dumps(runs, indent=1) + "\n")
