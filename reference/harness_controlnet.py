"""ControlNet references for the tiny SD1 and SDXL models.

Writes random ControlNets under fixtures/controlnet/: diffusers folders
(sd1-a, sd1-b, sdxl-a) made with ControlNetModel.from_unet and then
re-randomised everywhere, the zero convolutions and the conditioning
embedding's last convolution included (left at zero they would prove
nothing); sd1-a once more as an original single file (control_model.*
names, checked against diffusers' own converter); two control images; and
outputs/controlnet.{safetensors,json}: final latents and decoded images from
StableDiffusionControlNetPipeline, its img2img and inpaint variants and the
SDXL one, covering scale, start/end, guess mode and two ControlNets. Every
case must visibly change the output; this script asserts it. Random
weights: the images are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import (ControlNetModel, StableDiffusionControlNetImg2ImgPipeline,
                       StableDiffusionControlNetInpaintPipeline, StableDiffusionControlNetPipeline,
                       StableDiffusionPipeline, StableDiffusionXLControlNetImg2ImgPipeline,
                       StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline)
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from PIL import Image
from safetensors.torch import save_file

from harness_outputs import run_keeping_latents
from harness_single_file import unet_to_ldm

PROMPT = "a red circle on a white background"
# The tiny VAEs halve the size once: the hint block must too (two widths).
HINT_WIDTHS = (8, 16)


def controlnet(unet, seed: int) -> ControlNetModel:
    """A ControlNet of `unet`'s encoder with every weight re-randomised."""
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_WIDTHS)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def to_ldm(net: ControlNetModel, unet_config: dict, check: bool = True) -> dict:
    """The original layout: the UNet copy's LDM names, hint block, zero convs."""
    state = net.state_dict()
    widths = net.config.conditioning_embedding_out_channels
    encoder = {k: v for k, v in state.items() if not k.startswith("controlnet_")}
    out = {k.replace("model.diffusion_model.", "control_model."): v for k, v in unet_to_ldm(encoder, unet_config).items()}
    hint = ["conv_in"] + [f"blocks.{i}" for i in range(2 * (len(widths) - 1))] + ["conv_out"]
    for slot, name in enumerate(hint):
        for part in ("weight", "bias"):
            out[f"control_model.input_hint_block.{2 * slot}.{part}"] = state[f"controlnet_cond_embedding.{name}.{part}"]
    for key, value in state.items():
        if key.startswith("controlnet_down_blocks."):
            _, i, part = key.split(".")
            out[f"control_model.zero_convs.{i}.0.{part}"] = value
        elif key.startswith("controlnet_mid_block."):
            out[f"control_model.middle_block_out.0.{key.split('.')[-1]}"] = value
    # diffusers' own converter must read it back (all but the hint block,
    # whose slots it fixes for the full-size 8-conv layout).
    if check:
        back = convert_controlnet_checkpoint(dict(out), dict(net.config))
        for key, value in state.items():
            if not key.startswith("controlnet_cond_embedding."):
                assert torch.equal(back[key], value), key
    return {k: v.contiguous() for k, v in out.items()}


def control_images(folder: Path) -> list[Image.Image]:
    """Two 64x64 control images: edges of a circle, and stripes."""
    y, x = np.mgrid[0:64, 0:64]
    ring = (np.abs(np.hypot(x - 30, y - 34) - 18) < 2).astype(np.uint8) * 255
    stripes = ((x + 2 * y) // 6 % 2).astype(np.uint8) * 255
    images = [Image.fromarray(np.stack([ring] * 3, -1)),
              Image.fromarray(np.stack([stripes, 255 - stripes, stripes // 2], -1))]
    for name, image in zip(("control-a", "control-b"), images):
        image.save(folder / f"{name}.png")
    # Read back, so each image knows its file (the cases record it).
    return [Image.open(folder / f"{name}.png") for name in ("control-a", "control-b")]


def control_name(kwargs: dict, i: int) -> str:
    """The fixture path of the i-th control image a case passes."""
    images = kwargs.get("control_image", kwargs.get("image"))
    image = images[i] if isinstance(images, list) else images
    return f"controlnet/{Path(image.filename).name}"


def write_controlnet(fixtures: Path, outputs: Path) -> None:
    folder = fixtures / "controlnet"
    folder.mkdir(exist_ok=True)
    sd1 = StableDiffusionPipeline.from_pretrained(fixtures / "tiny-sd1", safety_checker=None)
    sd2 = StableDiffusionPipeline.from_pretrained(fixtures / "tiny-sd2", safety_checker=None)
    sdxl = StableDiffusionXLPipeline.from_pretrained(fixtures / "tiny-sdxl")
    nets = {"sd1-a": controlnet(sd1.unet, 30), "sd1-b": controlnet(sd1.unet, 31),
            "sd2-a": controlnet(sd2.unet, 33), "sdxl-a": controlnet(sdxl.unet, 32)}
    for name, net in nets.items():
        net.save_pretrained(folder / name)
    save_file(to_ldm(nets["sd1-a"], dict(sd1.unet.config)), folder / "sd1-a-original.safetensors")
    # The references use the nets as users load them (from_pretrained: eval
    # mode); the freshly built ones are in training mode, which moved the
    # SDXL img2img case by an ulp.
    nets = {name: ControlNetModel.from_pretrained(folder / name) for name in nets}
    ctrl_a, ctrl_b = control_images(folder)
    init = Image.open(fixtures / "images" / "init.png").convert("RGB")
    mask = Image.open(fixtures / "images" / "mask.png").convert("L")

    def run(cls, model, nets_used, **kwargs):
        net = [nets[n] for n in nets_used]
        pipe = cls.from_pretrained(fixtures / model, controlnet=net[0] if len(net) == 1 else net,
                                   **({} if "xl" in model else dict(safety_checker=None)))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # (key, pipeline, model, controlnets, task, call arguments)
    cases = [
        ("sd1.cn", "txt2img", "tiny-sd1", ["sd1-a"], dict(image=ctrl_a)),
        ("sd1.cn.scale0.5", "txt2img", "tiny-sd1", ["sd1-a"], dict(image=ctrl_a, controlnet_conditioning_scale=0.5)),
        ("sd1.cn.window", "txt2img", "tiny-sd1", ["sd1-a"],
         dict(image=ctrl_a, control_guidance_start=0.25, control_guidance_end=0.75)),
        ("sd1.cn.guess", "txt2img", "tiny-sd1", ["sd1-a"], dict(image=ctrl_a, guess_mode=True)),
        ("sd1.cn.two", "txt2img", "tiny-sd1", ["sd1-a", "sd1-b"],
         dict(image=[ctrl_a, ctrl_b], controlnet_conditioning_scale=[1.0, 0.6])),
        ("sd1.cn.img2img", "img2img", "tiny-sd1", ["sd1-a"], dict(image=init, control_image=ctrl_a, strength=0.75, controlnet_conditioning_scale=0.9)),
        ("sd1.cn.inpaint", "inpaint", "tiny-sd1", ["sd1-a"],
         dict(image=init, mask_image=mask, control_image=ctrl_a, strength=1.0, controlnet_conditioning_scale=1.0)),
        ("sd2.cn", "txt2img", "tiny-sd2", ["sd2-a"], dict(image=ctrl_b, controlnet_conditioning_scale=0.7)),
        ("sdxl.cn", "txt2img", "tiny-sdxl", ["sdxl-a"], dict(image=ctrl_a, controlnet_conditioning_scale=0.8)),
        ("sdxl.cn.img2img", "img2img", "tiny-sdxl", ["sdxl-a"],
         dict(image=init, control_image=ctrl_b, strength=0.8, controlnet_conditioning_scale=0.9)),
        ("sdxl.cn.guess", "txt2img", "tiny-sdxl", ["sdxl-a"], dict(image=ctrl_a, guess_mode=True)),
    ]
    classes = {("txt2img", False): StableDiffusionControlNetPipeline,
               ("img2img", False): StableDiffusionControlNetImg2ImgPipeline,
               ("inpaint", False): StableDiffusionControlNetInpaintPipeline,
               ("txt2img", True): StableDiffusionXLControlNetPipeline,
               ("img2img", True): StableDiffusionXLControlNetImg2ImgPipeline}
    tensors, runs = {}, []
    for key, task, model, used, kwargs in cases:
        xl = model == "tiny-sdxl"
        pipe = run(classes[(task, xl)], model, used)
        guidance = 5.0 if xl else 7.5
        latents, image = run_keeping_latents(pipe, PROMPT, num_inference_steps=4, guidance_scale=guidance,
                                             height=64, width=64, generator=torch.Generator("cpu").manual_seed(0),
                                             **kwargs)
        # The same run with the ControlNets' scale at 0 is the base model's:
        # each case must move away from it.
        zero = dict(kwargs, controlnet_conditioning_scale=[0.0] * len(used) if len(used) > 1 else 0.0)
        base, _ = run_keeping_latents(pipe, PROMPT, num_inference_steps=4, guidance_scale=guidance, height=64,
                                      width=64, generator=torch.Generator("cpu").manual_seed(0), **zero)
        change = (latents - base).abs().max().item()
        assert change > 0.05, f"{key} barely changes the output ({change})"
        tensors[key], tensors[f"{key}.image"] = latents, image
        # (explicit where diffusers' default is not 1.0: img2img 0.8, inpaint 0.5)
        scales = kwargs.get("controlnet_conditioning_scale", 1.0)
        runs.append(dict(key=key, task=task, model=model, prompt=PROMPT, seed=0, steps=4, guidance_scale=guidance,
                         height=64, width=64, controlnets=[f"controlnet/{n}" for n in used],
                         control_images=[control_name(kwargs, i) for i in range(len(used))],
                         scales=scales if isinstance(scales, list) else [scales],
                         start=kwargs.get("control_guidance_start", 0.0),
                         end=kwargs.get("control_guidance_end", 1.0), guess_mode=kwargs.get("guess_mode", False),
                         strength=kwargs.get("strength")))
    save_file(tensors, outputs / "controlnet.safetensors")
    (outputs / "controlnet.json").write_text(json.dumps(runs, indent=1) + "\n")


def write_controlnet_manifests(manifests: Path) -> None:
    """Every tensor name and shape of the original single-file SD1.5 ControlNet
    releases (control_v11p_sd15_*.safetensors), from the diffusers manifest."""
    m = json.loads((manifests / "sd15" / "controlnet.json").read_text())
    unet = json.loads((manifests / "sd15" / "unet.json").read_text())["config"]
    with torch.device("meta"):
        net = ControlNetModel(**{k: v for k, v in m["config"].items() if not k.startswith("_")})
    out = to_ldm(net, unet, check=False)
    tensors = {k: list(v.shape) for k, v in sorted(out.items())}
    (manifests / "sd15" / "controlnet_single_file.json").write_text(
        json.dumps({"tensors": tensors}, indent=2, sort_keys=True) + "\n")
