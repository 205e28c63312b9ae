"""IP-Adapter references from diffusers' own `load_ip_adapter`.

Writes under fixtures/ip-adapter/: a tiny random image encoder
(`CLIPVisionModelWithProjection`, 224x224 in 14-pixel patches, width 32, 3 layers, saved by
transformers), and tiny random adapters in the files' original layout (`image_proj.*`,
`ip_adapter.N.to_k_ip.weight`, N = 1, 3, 5, ... over the UNet's cross-attentions in
diffusers' processor order): plain (`ImageProjection`) and Plus (the Perceiver resampler,
`IPAdapterPlusImageProjection`) for the tiny SD1 and SDXL UNets, as `.safetensors`, and the
SD1 plain one again as a `.bin` (torch.save's nested dict). Loading each back through
diffusers must give the modules they were made from (asserted).

outputs/ip_adapter.safetensors: CLIPImageProcessor's pixels for two images (`pixels.*`),
the encoder's `image_embeds` and penultimate hidden states (`embeds.*`, `penultimate.*`), and
final latents of whole runs (64x64, 4 steps, seed 0): plain, Plus, a scale, two adapters,
two images for one adapter, img2img, with a ControlNet, SDXL plain and Plus, per-block
scale dicts on SD1 and SDXL. Each run must
move away from the same run at scale 0 (asserted). Random weights: the images are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from harness_models import randomize_norms, write_json
from harness_outputs import run_keeping_latents
from harness_upscale import save_pth

PROMPT = "a red circle on a white background"
ENCODER = dict(hidden_size=32, intermediate_size=37, projection_dim=12, num_hidden_layers=3,
               num_attention_heads=4, image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)


def image_encoder(folder: Path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(40)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**ENCODER)).eval()
    randomize_norms(model, 40)
    model.save_pretrained(folder)
    return CLIPVisionModelWithProjection.from_pretrained(folder).eval()


def plain_projection(cross_dim: int, seed: int):
    from diffusers.models.embeddings import ImageProjection

    torch.manual_seed(seed)
    projection = ImageProjection(image_embed_dim=ENCODER["projection_dim"], cross_attention_dim=cross_dim,
                                 num_image_text_embeds=4)
    randomize_norms(projection, seed)
    original = {k.replace("image_embeds", "proj"): v for k, v in projection.state_dict().items()}
    return projection, original


def plus_projection(cross_dim: int, seed: int):
    """The resampler, and its state in the original repository's names (the inverse of
    diffusers' `_convert_ip_adapter_image_proj_to_diffusers`)."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    projection = IPAdapterPlusImageProjection(embed_dims=ENCODER["hidden_size"], output_dims=cross_dim,
                                              hidden_dims=16, depth=4, dim_head=64, heads=1, num_queries=4)
    randomize_norms(projection, seed)
    return projection, to_original(projection.state_dict())


def to_original(state: dict) -> dict:
    """A resampler's state in the original repository's names."""
    original = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "layers":
            original[key] = value
            continue
        i, rest = parts[1], ".".join(parts[2:])
        renames = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
                   "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}
        module, leaf = rest.rsplit(".", 1)
        if module == "attn.to_k":
            original[f"layers.{i}.0.to_kv.weight"] = torch.cat([value, state[f"layers.{i}.attn.to_v.weight"]])
        elif module != "attn.to_v":
            original[f"layers.{i}.{renames[module]}.{leaf}"] = value
    return original


def ip_layers(unet, seed: int) -> tuple[dict, dict]:
    """Random to_k_ip/to_v_ip for each cross-attention, in the files' numbering, and the
    same by diffusers' processor name."""
    gen = torch.Generator().manual_seed(seed)
    original, by_name, key_id = {}, {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
        for part in ("to_k_ip", "to_v_ip"):
            weight = torch.randn(hidden, unet.config.cross_attention_dim, generator=gen) * 0.3
            original[f"{key_id}.{part}.weight"] = weight
            by_name[f"{name}.{part}"] = weight
        key_id += 2
    return original, by_name


def write_adapter(folder: Path, name: str, projection: dict, layers: dict, bin_too: bool = False) -> None:
    flat = {f"image_proj.{k}": v.contiguous() for k, v in projection.items()}
    flat.update({f"ip_adapter.{k}": v.contiguous() for k, v in layers.items()})
    save_file(flat, folder / f"{name}.safetensors")
    if bin_too:
        save_pth({"image_proj": projection, "ip_adapter": layers}, folder / f"{name}.bin", check=False)


def check_loaded(pipe, projections: list, layers: list) -> None:
    """diffusers' loader gives back exactly the modules the files were made from."""
    loaded = pipe.unet.encoder_hid_proj.image_projection_layers
    for mine, theirs in zip(projections, loaded):
        for k, v in mine.state_dict().items():
            assert torch.equal(theirs.state_dict()[k], v), k
    for name, processor in pipe.unet.attn_processors.items():
        if name.endswith("attn1.processor") or name.startswith("encoder_hid_proj."):
            continue
        for i, by_name in enumerate(layers):
            assert torch.equal(processor.to_k_ip[i].weight, by_name[f"{name}.to_k_ip"]), name
            assert torch.equal(processor.to_v_ip[i].weight, by_name[f"{name}.to_v_ip"]), name


def write_ip_adapter(fixtures: Path, outputs: Path) -> None:
    from diffusers import (ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionImg2ImgPipeline,
                           StableDiffusionPipeline, StableDiffusionXLPipeline)

    folder = fixtures / "ip-adapter"
    folder.mkdir(exist_ok=True)
    encoder = image_encoder(folder / "image_encoder")
    sd1 = StableDiffusionPipeline.from_pretrained(fixtures / "tiny-sd1", safety_checker=None)
    sdxl = StableDiffusionXLPipeline.from_pretrained(fixtures / "tiny-sdxl")
    adapters = {}
    for family, unet, seed in (("sd1", sd1.unet, 41), ("sdxl", sdxl.unet, 43)):
        cross = unet.config.cross_attention_dim
        for kind, make in (("plain", plain_projection), ("plus", plus_projection)):
            module, projection = make(cross, seed + (kind == "plus"))
            layers, by_name = ip_layers(unet, seed + 10 + (kind == "plus"))
            write_adapter(folder, f"{family}-{kind}", projection, layers, bin_too=(family, kind) == ("sd1", "plain"))
            adapters[f"{family}-{kind}"] = (module, by_name)

    images = {name: Image.open(fixtures / "images" / f"{name}.png").convert("RGB")
              for name in ("init", "init-72x64", "control-a-72x64")}
    tensors, runs = {}, []
    # 1. the processor and the encoder alone
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size=224, crop_size=224)
    with torch.no_grad():
        for name, image in images.items():
            pixels = processor(image, return_tensors="pt").pixel_values
            out = encoder(pixels, output_hidden_states=True)
            tensors[f"pixels.{name}"] = pixels
            tensors[f"embeds.{name}"] = out.image_embeds
            tensors[f"penultimate.{name}"] = out.hidden_states[-2]

    # 2. whole runs: (key, model, adapters, images per adapter, scales, extra call arguments)
    cases = [
        ("sd1.plain", "sd1", ["sd1-plain"], [["init"]], [1.0], {}),
        ("sd1.plain.scale0.6", "sd1", ["sd1-plain"], [["init"]], [0.6], {}),
        ("sd1.plus", "sd1", ["sd1-plus"], [["init-72x64"]], [0.8], {}),
        ("sd1.two", "sd1", ["sd1-plain", "sd1-plus"], [["init"], ["control-a-72x64"]], [0.6, 0.9], {}),
        ("sd1.plain.two-images", "sd1", ["sd1-plain"], [["init", "init-72x64"]], [0.7], {}),
        ("sd1.plain.img2img", "sd1", ["sd1-plain"], [["init-72x64"]], [0.8], {"strength": 0.75}),
        ("sd1.plain.controlnet", "sd1", ["sd1-plain"], [["init"]], [0.8], {"controlnet": "sd1-a"}),
        ("sdxl.plain", "sdxl", ["sdxl-plain"], [["init"]], [0.8], {}),
        ("sdxl.plus", "sdxl", ["sdxl-plus"], [["init-72x64"]], [0.8], {}),
        # diffusers' per-block dicts (unnamed blocks at 0; InstantStyle's style-only on SDXL)
        ("sd1.plain.blocks", "sd1", ["sd1-plain"], [["init"]],
         [{"down": {"block_0": [0.0, 1.0]}, "mid": 0.5, "up": {"block_1": [1.0, 0.0, 0.7]}}], {}),
        ("sdxl.plain.style", "sdxl", ["sdxl-plain"], [["init"]], [{"up": {"block_0": [0.0, 1.0]}}], {}),
    ]
    control = Image.open(fixtures / "controlnet" / "control-a.png")
    for key, family, used, image_names, scales, extra in cases:
        extra = dict(extra)
        if family == "sdxl":
            pipe = StableDiffusionXLPipeline.from_pretrained(fixtures / "tiny-sdxl")
        elif "controlnet" in extra:
            net = ControlNetModel.from_pretrained(fixtures / "controlnet" / extra.pop("controlnet"))
            pipe = StableDiffusionControlNetPipeline.from_pretrained(fixtures / "tiny-sd1", controlnet=net,
                                                                     safety_checker=None)
            extra["image"] = control
        elif "strength" in extra:
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(fixtures / "tiny-sd1", safety_checker=None)
            extra["image"] = images["init"]
        else:
            pipe = StableDiffusionPipeline.from_pretrained(fixtures / "tiny-sd1", safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=[f"{a}.safetensors" for a in used],
                             image_encoder_folder="image_encoder")
        check_loaded(pipe, [adapters[a][0] for a in used], [adapters[a][1] for a in used])
        # one entry per adapter: an image, or a list of images for that adapter
        ip_images = [[images[n] for n in names] if len(names) > 1 else images[names[0]] for names in image_names]
        guidance = 5.0 if family == "sdxl" else 7.5

        def run(scale_list):
            pipe.set_ip_adapter_scale(scale_list if len(scale_list) > 1 else scale_list[0])
            return run_keeping_latents(pipe, PROMPT, num_inference_steps=4, guidance_scale=guidance, height=64,
                                       width=64, generator=torch.Generator("cpu").manual_seed(0),
                                       ip_adapter_image=ip_images, **extra)

        latents, image = run(scales)
        base, _ = run([0.0] * len(scales))
        change = (latents - base).abs().max().item()
        assert change > 0.05, f"{key} barely changes the output ({change})"
        tensors[key], tensors[f"{key}.image"] = latents, image
        runs.append(dict(key=key, model=f"tiny-{family}", adapters=[f"ip-adapter/{a}.safetensors" for a in used],
                         images=image_names, scales=scales, steps=4, guidance_scale=guidance, seed=0,
                         strength=extra.get("strength"), dtype="f32"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, outputs / "ip_adapter.safetensors")
    write_json(outputs / "ip_adapter.json", runs)


# The image encoders of h94/IP-Adapter (models/image_encoder: OpenCLIP ViT-H/14;
# sdxl_models/image_encoder: ViT-bigG/14), as their config.json files give them.
VIT = dict(image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
ENCODERS = {
    "image_encoder_vit-h": dict(VIT, hidden_size=1280, intermediate_size=5120, projection_dim=1024,
                                num_hidden_layers=32, num_attention_heads=16),
    "image_encoder_vit-bigg": dict(VIT, hidden_size=1664, intermediate_size=8192, projection_dim=1280,
                                   num_hidden_layers=48, num_attention_heads=16),
}
# The released adapters: (family, Plus?, encoder, Plus resampler width). Plain files
# project the encoder's embedding to 4 tokens; Plus files resample 16 queries.
ADAPTERS = {
    "ip-adapter_sd15": ("sd15", False, "image_encoder_vit-h", None),
    "ip-adapter-plus_sd15": ("sd15", True, "image_encoder_vit-h", 768),
    "ip-adapter_sdxl": ("sdxl", False, "image_encoder_vit-bigg", None),
    "ip-adapter_sdxl_vit-h": ("sdxl", False, "image_encoder_vit-h", None),
    "ip-adapter-plus_sdxl_vit-h": ("sdxl", True, "image_encoder_vit-h", 1280),
}


def write_ip_adapter_manifests(out: Path) -> None:
    """Names and shapes of the released encoders and adapter files, built on the meta
    device from the real configs (the UNets' from manifests/<family>/unet.json)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = out / "ip-adapter"
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        for name, config in ENCODERS.items():
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
            tensors = {k: list(v.shape) for k, v in model.state_dict().items()}
            write_json(folder / f"{name}.json", {"config": dict(config, architectures=[
                "CLIPVisionModelWithProjection"]), "tensors": tensors, "optional": {}})
        for name, (family, plus, encoder, width) in ADAPTERS.items():
            unet_config = json.loads((out / family / "unet.json").read_text())["config"]
            unet = UNet2DConditionModel(**{k: v for k, v in unet_config.items() if not k.startswith("_")})
            cross, vision = unet.config.cross_attention_dim, ENCODERS[encoder]
            if plus:
                projection = to_original(IPAdapterPlusImageProjection(
                    embed_dims=vision["hidden_size"], output_dims=cross, hidden_dims=width, depth=4,
                    dim_head=64, heads=width // 64, num_queries=16).state_dict())
            else:
                module = ImageProjection(image_embed_dim=vision["projection_dim"], cross_attention_dim=cross,
                                         num_image_text_embeds=4)
                projection = {k.replace("image_embeds", "proj"): v for k, v in module.state_dict().items()}
            tensors = {f"image_proj.{k}": list(v.shape) for k, v in projection.items()}
            key_id = 1
            for processor in unet.attn_processors:
                if processor.endswith("attn2.processor"):
                    hidden = unet.get_submodule(processor.removesuffix(".processor")).to_q.out_features
                    for part in ("to_k_ip", "to_v_ip"):
                        tensors[f"ip_adapter.{key_id}.{part}.weight"] = [hidden, cross]
                    key_id += 2
            write_json(folder / f"{name}.json", {"family": family, "encoder": encoder,
                                                 "tensors": dict(sorted(tensors.items())), "optional": {}})
