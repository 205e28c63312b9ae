"""Reference outputs of the tiny models: tokenizer, text encoders, UNet, VAE, txt2img, layers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from harness_schedulers import SAMPLERS

HAND_WRITTEN = [
    "", " ", "a photo of a cat", "A Photo Of A CAT", "a  photo   of\ta\ncat",
    "a red circle on a white background", "a large blue triangle on a white background",
    "portrait of an astronaut, highly detailed, 8k, trending on artstation",
    "(masterpiece:1.2), best quality, [blurry], ((sharp focus))",
    "a \\(literal\\) parenthesis and a \\[bracket\\]", "don't stop believin'", "it's, they're, we've, I'll, you'd",
    "3.14159 2,718 1e-9 #42 $100 50% 1/2", "12345678901234567890", "Zoë café naïve résumé façade",
    "Ærøskøbing straße groß", "東京の夜景、ネオン", "一只可爱的猫", "고양이 사진", "кот на крыше",
    "القط الجميل", "🐱 cat emoji 🎨🖌️", "👩‍🚀 astronaut with family 👨‍👩‍👧", "fire 🔥🔥🔥",
    "email me at someone@example.com or visit https://example.com/path?q=1",
    "snake_case and CamelCase and kebab-case", "<|startoftext|> inside text <|endoftext|>",
    "tabs\tand\nnewlines\r\nmixed", "...!!!???", "—em dash– en dash “quotes” ‘single’",
    "ﬁ ligature and full-width ＡＢＣ１２３", "a" * 100, "word " * 80,
    "a very long prompt " + ", ".join(f"detail number {i}" for i in range(40)),
    "x-ray, x ray, xray", "C++ and C# and F#", "100°C, 5km/h, ½ cup", "♥♠♦♣ ★☆",
]

WORDS = (
    "a the of and cat dog castle forest neon city night portrait landscape painting oil watercolor "
    "detailed intricate 4k 8k hdr cinematic lighting volumetric fog sunset sunrise golden hour blue red "
    "green yellow purple orange circle square triangle large small white black gray background "
    "photorealistic unreal engine octane render by greg rutkowski studio ghibli anime manga sketch"
).split()
DECORATIONS = ["", ",", ".", "!", "?", ";", ":", " -", "'s", "(", ")", "[", "]", ":1.3)", "  ", "\t", "..."]
EXOTIC = ["é", "ü", "ñ", "ø", "日本", "猫", "한글", "ж", "🙂", "🚀", "™", "©", "½", "ß", "İ", "ﬂ"]


def prompts() -> list[str]:
    rng = random.Random(1234)
    out = list(HAND_WRITTEN)
    while len(out) < 320:
        n = rng.choice([1, 3, 6, 12, 25, 60, 90])
        parts = []
        for _ in range(n):
            word = rng.choice(WORDS)
            roll = rng.random()
            if roll < 0.15:
                word = word.upper() if rng.random() < 0.5 else word.capitalize()
            elif roll < 0.25:
                word += rng.choice(EXOTIC)
            elif roll < 0.32:
                word = str(rng.randint(0, 100000))
            parts.append(word + rng.choice(DECORATIONS))
        out.append(" ".join(parts))
    return out


def tensor_dict(prefix: str, values: dict) -> dict:
    return {f"{prefix}.{k}": v.detach().contiguous().clone() for k, v in values.items()}


def write_tokenizer_ids(fixtures: Path, outputs: Path) -> None:
    texts = prompts()
    (outputs / "tokenizer_prompts.json").write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n")
    tensors = {}
    # One folder per layout: legacy files (sd1), tokenizer.json only (sd2, both SDXL
    # tokenizers), both (inpaint), and tokenizer.json with added tokens (added).
    folders = [("sd1", "tiny-sd1/tokenizer"), ("sd2", "tiny-sd2/tokenizer"),
               ("sdxl_1", "tiny-sdxl/tokenizer"), ("sdxl_2", "tiny-sdxl/tokenizer_2"),
               ("inpaint", "tiny-sd1-inpaint/tokenizer"), ("added", "tokenizer-added")]
    for name, folder in folders:
        tok = CLIPTokenizer.from_pretrained(fixtures / folder)
        batch = texts + ADDED_TOKEN_PROMPTS if name == "added" else texts
        ids = tok(batch, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        full = tok(batch, truncation=False).input_ids
        tensors[f"{name}.input_ids"] = ids
        tensors[f"{name}.untruncated_length"] = torch.tensor([len(x) for x in full])
    save_file(tensors, outputs / "tokenizer.safetensors")


# Prompts for the added-token tokenizer (after the shared ones): whole-token
# matches, case (the added tokens are normalised), adjacency, near misses.
ADDED_TOKEN_PROMPTS = [
    "a <cat-toy> on a mat", "<cat-toy><cat-toy>", "A <CAT-TOY> in <Style Word>",
    "<cat-toy>s and <cat-toys>", "in the style of <style word>", "<cat-toy"]


TEXT_PROMPTS = ["a photo of a cat", "", "a large blue triangle on a white background, (detailed:1.2)"]


def encode(tokenizer: CLIPTokenizer, model, prefix: str) -> dict:
    ids = tokenizer(TEXT_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    values = {
        "input_ids": ids,
        "last_hidden_state": out.last_hidden_state,
        "hidden_states": torch.stack(out.hidden_states),
    }
    if hasattr(out, "text_embeds"):
        values["text_embeds"] = out.text_embeds
    else:
        values["pooler_output"] = out.pooler_output
    return tensor_dict(prefix, values)


def write_text_encoders(fixtures: Path, outputs: Path) -> None:
    tensors = {}
    for prefix, folder, sub, cls in [
        ("sd1", "tiny-sd1", "", CLIPTextModel),
        ("sd2", "tiny-sd2", "", CLIPTextModel),
        ("sdxl_1", "tiny-sdxl", "", CLIPTextModel),
        ("sdxl_2", "tiny-sdxl", "_2", CLIPTextModelWithProjection),
    ]:
        tok = CLIPTokenizer.from_pretrained(fixtures / folder / f"tokenizer{sub}")
        model = cls.from_pretrained(fixtures / folder / f"text_encoder{sub}").eval()
        tensors.update(encode(tok, model, prefix))
    save_file(tensors, outputs / "text_encoders.safetensors")


def write_unets(fixtures: Path, outputs: Path) -> None:
    tensors = {}
    for prefix, folder in [("sd1", "tiny-sd1"), ("sd2", "tiny-sd2"), ("sdxl", "tiny-sdxl"),
                           ("inpaint", "tiny-sd1-inpaint")]:
        model = UNet2DConditionModel.from_pretrained(fixtures / folder / "unet").eval()
        c = model.config
        gen = torch.Generator().manual_seed(10)
        sample = torch.randn(2, c.in_channels, 16, 16, generator=gen)
        context = torch.randn(2, 77, c.cross_attention_dim, generator=gen)
        timestep = torch.tensor([999, 37])
        inputs = {"sample": sample, "timestep": timestep, "encoder_hidden_states": context}
        kwargs = {}
        if c.addition_embed_type == "text_time":
            inputs["text_embeds"] = torch.randn(2, 8, generator=gen)
            inputs["time_ids"] = torch.tensor([[64.0, 64, 0, 0, 64, 64], [128, 96, 8, 16, 64, 64]])
            kwargs["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
        with torch.no_grad():
            out = model(sample, timestep, context, **kwargs).sample
            scalar_t = model(sample, 500, context, **kwargs).sample  # one timestep for the batch
        tensors.update(tensor_dict(prefix, dict(inputs, out=out, out_t500=scalar_t)))
    save_file(tensors, outputs / "unet.safetensors")


def write_vaes(fixtures: Path, outputs: Path) -> None:
    tensors = {}
    for prefix, folder in [("sd1", "tiny-sd1"), ("sdxl", "tiny-sdxl")]:
        model = AutoencoderKL.from_pretrained(fixtures / folder / "vae").eval()
        gen = torch.Generator().manual_seed(20)
        image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
        latents = torch.randn(2, 4, 16, 16, generator=gen)
        with torch.no_grad():
            dist = model.encode(image).latent_dist
            sample = dist.sample(generator=torch.Generator().manual_seed(21))
            decoded = model.decode(latents).sample
        tensors.update(tensor_dict(prefix, {
            "image": image, "mean": dist.mean, "std": dist.std, "sample": sample,
            "latents": latents, "decoded": decoded,
        }))
        # Tiled: tiles of the config's sample_size (32 px, 16 latents), 25% overlap.
        model.enable_tiling()
        big_latents = torch.randn(1, 4, 24, 24, generator=gen)
        big_image = torch.rand(1, 3, 48, 48, generator=gen) * 2 - 1
        with torch.no_grad():
            tiled_decoded = model.decode(big_latents).sample
            tiled_mean = model.encode(big_image).latent_dist.mean
        model.disable_tiling()
        tensors.update(tensor_dict(prefix, {
            "tiled_latents": big_latents, "tiled_decoded": tiled_decoded,
            "tiled_image": big_image, "tiled_mean": tiled_mean,
        }))
    save_file(tensors, outputs / "vae.safetensors")


def write_txt2img(fixtures: Path, outputs: Path) -> None:
    """Whole-pipeline final latents (before VAE decode) for fixed seeds, CPU generator."""
    pipe = StableDiffusionPipeline.from_pretrained(fixtures / "tiny-sd1", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = pipe.scheduler.config
    samplers = {
        "ddim": DDIMScheduler.from_config(base),
        "euler": EulerDiscreteScheduler.from_config(base),
        "euler-a": EulerAncestralDiscreteScheduler.from_config(base),
        "dpm++2m": DPMSolverMultistepScheduler.from_config(base),
        "pndm": pipe.scheduler,
    }
    runs = []
    tensors = {}
    for name, scheduler in samplers.items():
        pipe.scheduler = scheduler
        for seed, steps, guidance, negative in [(0, 4, 7.5, ""), (42, 6, 1.0, "blurry")]:
            prompt = "a red circle on a white background"
            latents = pipe(
                prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                height=64, width=64, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="latent",
            ).images
            key = f"{name}.seed{seed}"
            tensors[key] = latents.contiguous()
            runs.append(dict(key=key, scheduler=name, seed=seed, steps=steps, guidance_scale=guidance,
                             prompt=prompt, negative_prompt=negative, height=64, width=64))
    save_file(tensors, outputs / "txt2img.safetensors")
    (outputs / "txt2img.json").write_text(json.dumps(runs, indent=1) + "\n")


def run_keeping_latents(pipe, *args, **kwargs):
    """A pipeline call with output_type="pil" that also returns the final
    latents (from the last step's callback): (latents, first image as uint8 HxWx3)."""
    final = {}

    def keep(pipe, i, t, kw):
        final["latents"] = kw["latents"]
        return kw

    image = pipe(*args, output_type="pil", callback_on_step_end=keep, **kwargs).images[0]
    return final["latents"].contiguous(), torch.from_numpy(np.asarray(image).copy())


def write_txt2img_dtypes(fixtures: Path, outputs: Path, name: str, folder: str, dtypes: list, samplers,
                         seed: int, negative: str, prefix: str = "") -> None:
    """txt2img final latents of `folder` on the CPU, 64x64, 4 steps, for each
    (dtype name, dtype) and each sampler `samplers(pipe)` returns, written to
    outputs/<name>.{safetensors,json} under keys "<prefix><dtype>.<sampler>", with
    the decoded 8-bit image (H, W, 3) under "<key>.image"."""
    tensors, runs = {}, []
    prompt = "a red circle on a white background"
    for dtype_name, dtype in dtypes:
        pipe = StableDiffusionPipeline.from_pretrained(fixtures / folder, safety_checker=None, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        for sampler, scheduler in samplers(pipe).items():
            pipe.scheduler = scheduler
            latents, image = run_keeping_latents(pipe, prompt, negative_prompt=negative, num_inference_steps=4,
                                                 guidance_scale=7.5, height=64, width=64,
                                                 generator=torch.Generator("cpu").manual_seed(seed))
            key = f"{prefix}{dtype_name}.{sampler}"
            tensors[key], tensors[f"{key}.image"] = latents, image
            runs.append(dict(key=key, dtype=dtype_name, scheduler=sampler, seed=seed, steps=4, guidance_scale=7.5,
                             prompt=prompt, negative_prompt=negative, height=64, width=64))
    save_file(tensors, outputs / f"{name}.safetensors")
    (outputs / f"{name}.json").write_text(json.dumps(runs, indent=1) + "\n")


def write_txt2img_half(fixtures: Path, outputs: Path) -> None:
    """txt2img in f16 and bf16 with every sampler of the project: diffusers draws
    the noise in the pipeline's dtype (other numbers than an f32 draw) and
    computes in it."""
    def samplers(pipe):
        base = pipe.scheduler.config
        found = {name: cls.from_config(base, **overrides) for name, (cls, overrides) in SAMPLERS.items()}
        found["pndm"] = pipe.scheduler  # as the folder has it
        return found

    write_txt2img_dtypes(fixtures, outputs, "txt2img_half", "tiny-sd1",
                         [("f16", torch.float16), ("bf16", torch.bfloat16)], samplers, seed=0, negative="")


def write_sd2(fixtures: Path, outputs: Path) -> None:
    """Tiny SD2 txt2img (v-prediction, upcast_attention, its own DDIM config, and
    Euler) in f32, f16 and bf16."""
    def samplers(pipe):
        return {"ddim": pipe.scheduler, "euler": EulerDiscreteScheduler.from_config(pipe.scheduler.config)}

    write_txt2img_dtypes(fixtures, outputs, "sd2", "tiny-sd2",
                         [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)], samplers,
                         seed=5, negative="blurry", prefix="sd2.")


def write_layers(outputs: Path) -> None:
    """Single shared blocks: their weights (diffusers key names) and input/output pairs."""
    torch.manual_seed(30)
    resnet = ResnetBlock2D(in_channels=16, out_channels=32, temb_channels=24, groups=8, eps=1e-6).eval()
    vae_attn = Attention(32, heads=1, dim_head=32, rescale_output_factor=1.0, eps=1e-6, norm_num_groups=8,
                         residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True).eval()
    cross_attn = Attention(32, cross_attention_dim=8, heads=4, dim_head=8, bias=False).eval()
    self_attn = Attention(32, heads=2, dim_head=16, bias=False).eval()
    for module in (resnet, vae_attn):
        for norm in module.modules():
            if isinstance(norm, torch.nn.GroupNorm):
                with torch.no_grad():
                    norm.weight.normal_(1, 0.1)
                    norm.bias.normal_(0, 0.1)
    weights = {}
    for prefix, module in [("resnet", resnet), ("vae_attn", vae_attn), ("cross_attn", cross_attn),
                           ("self_attn", self_attn)]:
        weights.update({f"{prefix}.{k}": v.contiguous() for k, v in module.state_dict().items()})
    save_file(weights, outputs / "layers_weights.safetensors")

    gen = torch.Generator().manual_seed(31)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    temb = torch.randn(2, 24, generator=gen)
    fmap = torch.randn(2, 32, 8, 8, generator=gen)
    tokens = torch.randn(2, 10, 32, generator=gen)
    context = torch.randn(2, 7, 8, generator=gen)
    with torch.no_grad():
        io = {
            "resnet.input": x, "resnet.temb": temb, "resnet.output": resnet(x, temb),
            "vae_attn.input": fmap, "vae_attn.output": vae_attn(fmap),
            "cross_attn.input": tokens, "cross_attn.context": context,
            "cross_attn.output": cross_attn(tokens, encoder_hidden_states=context),
            "self_attn.output": self_attn(tokens),
        }
    save_file({k: v.contiguous() for k, v in io.items()}, outputs / "layers_io.safetensors")


def write_images(fixtures: Path) -> tuple[Image.Image, Image.Image]:
    """A 64x64 init image (gradient with a disc) and a mask (white square = repaint)."""
    y, x = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = ((x - 40) ** 2 + (y - 24) ** 2 < 14**2).to(torch.uint8)
    rgb = torch.stack([x * 4, y * 4, 255 - disc * 200 - x], dim=-1).clamp(0, 255).to(torch.uint8)
    init = Image.fromarray(rgb.numpy(), "RGB")
    mask_values = torch.zeros(64, 64, dtype=torch.uint8)
    mask_values[16:48, 8:40] = 255
    mask = Image.fromarray(mask_values.numpy(), "L")
    folder = fixtures / "images"
    folder.mkdir(exist_ok=True)
    init.save(folder / "init.png")
    mask.save(folder / "mask.png")
    return init, mask


def write_img2img_inpaint(fixtures: Path, outputs: Path, half: bool = False) -> None:
    """Final latents of diffusers' img2img and inpaint pipelines, CPU generator; in
    f32, or with `half` in f16 and bf16 (keys prefixed with the dtype)."""
    init, mask = write_images(fixtures)
    runs, tensors = [], {}
    prompt, steps, guidance = "a red circle on a white background", 4, 7.5
    dtypes = [("f16", torch.float16), ("bf16", torch.bfloat16)] if half else [("", torch.float32)]

    for dtype_name, dtype in dtypes:
        prefix = f"{dtype_name}." if dtype_name else ""

        def run(pipe, key, **kwargs):
            pipe.set_progress_bar_config(disable=True)
            latents = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                           generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **kwargs).images
            tensors[prefix + key] = latents.contiguous()
            meta = {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str))}
            extra = {"dtype": dtype_name} if dtype_name else {}
            runs.append(dict(key=prefix + key, seed=0, steps=steps, guidance_scale=guidance, prompt=prompt,
                             **extra, **meta))

        samplers = [("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler)]
        if half:  # DPM-Solver's add_noise computes alpha_t and sigma_t in the samples' dtype
            samplers.append(("dpm++2m", DPMSolverMultistepScheduler))
        for name, cls in samplers:
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(fixtures / "tiny-sd1", safety_checker=None,
                                                                  torch_dtype=dtype)
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
            run(pipe, f"img2img.{name}", image=init, strength=0.75, scheduler=name)
            for folder, unet in [("tiny-sd1-inpaint", "9ch"), ("tiny-sd1", "4ch")]:
                pipe = StableDiffusionInpaintPipeline.from_pretrained(fixtures / folder, safety_checker=None,
                                                                      torch_dtype=dtype)
                pipe.scheduler = cls.from_config(pipe.scheduler.config)
                for strength in (1.0, 0.75):
                    run(pipe, f"inpaint.{unet}.{name}.s{int(strength * 100)}", image=init, mask_image=mask,
                        strength=strength, height=64, width=64, scheduler=name, model=folder)
    name = "img2img_inpaint_half" if half else "img2img_inpaint"
    save_file(tensors, outputs / f"{name}.safetensors")
    (outputs / f"{name}.json").write_text(json.dumps(runs, indent=1) + "\n")


def write_sdxl(fixtures: Path, outputs: Path) -> None:
    """SDXL txt2img final latents and images (Euler, leading spacing), with and without
    a negative prompt, and img2img (strength 0.75), in f32, f16 and bf16 (half-precision
    keys prefixed with the dtype). Under force_upcast diffusers' SDXL pipelines decode
    with the f16 weights upcast, and encode in f32 after rounding the image to the dtype."""
    tensors, runs = {}, []
    init = Image.open(fixtures / "images" / "init.png")
    prompt = "a red circle on a white background"
    for dtype_name, dtype in [("", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
        prefix = f"{dtype_name}." if dtype_name else ""
        extra = {"dtype": dtype_name} if dtype_name else {}
        pipe = StableDiffusionXLPipeline.from_pretrained(fixtures / "tiny-sdxl", torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        for key, negative, seed in [("sdxl.zero_negative", None, 0), ("sdxl.negative", "blurry", 3)]:
            latents, image = run_keeping_latents(pipe, prompt, negative_prompt=negative, num_inference_steps=4,
                                                 guidance_scale=5.0, height=64, width=64,
                                                 generator=torch.Generator("cpu").manual_seed(seed))
            tensors[prefix + key], tensors[f"{prefix}{key}.image"] = latents, image
            runs.append(dict(key=prefix + key, negative_prompt=negative, seed=seed, steps=4, guidance_scale=5.0,
                             height=64, width=64, **extra))
        pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(fixtures / "tiny-sdxl", torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        latents, image = run_keeping_latents(pipe, prompt, image=init, strength=0.75, num_inference_steps=4,
                                             guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0))
        key = f"{prefix}sdxl.img2img"
        tensors[key], tensors[f"{key}.image"] = latents, image
        runs.append(dict(key=key, seed=0, steps=4, guidance_scale=5.0, strength=0.75, **extra))
    save_file(tensors, outputs / "sdxl.safetensors")
    (outputs / "sdxl.json").write_text(json.dumps(runs, indent=1) + "\n")


def write_shapes_model(repo: Path, outputs: Path) -> None:
    """The project's trained shapes model (crates/sd-cli/shapes) in diffusers: the
    same seed and scheduler must give this pipeline's latents."""
    model = repo / "crates" / "sd-cli" / "shapes"
    if not (model / "model_index.json").exists():
        return
    # Weights are stored in f16; both pipelines compute in f32.
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    tensors, runs = {}, []
    for prompt, seed in [("a large blue triangle on a white background", 0), ("a small red circle on a black background", 1)]:
        latents = pipe(prompt, num_inference_steps=20, guidance_scale=7.5, height=32, width=32,
                       generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
        key = f"shapes.seed{seed}"
        tensors[key] = latents.contiguous()
        runs.append(dict(key=key, prompt=prompt, seed=seed, steps=20, guidance_scale=7.5))
    save_file(tensors, outputs / "shapes_model.safetensors")
    (outputs / "shapes_model.json").write_text(json.dumps(runs, indent=1) + "\n")


def write_rng(outputs: Path) -> None:
    """Sequential draws from one seeded CPU generator, as a pipeline makes them
    (small shapes take torch's scalar path, 16 and more its vectorised one)."""
    gen = torch.Generator("cpu").manual_seed(1234)
    shapes = [(1, 4, 8, 8), (3,), (5,), (2, 17), (1, 4, 64, 64)]
    draws = {f"randn.{i}": torch.randn(shape, generator=gen) for i, shape in enumerate(shapes)}
    draws["rand.5"] = torch.rand((2, 9), generator=gen)
    draws["randn.6"] = torch.randn((4,), generator=gen)
    # Half-precision draws (what diffusers makes in f16/bf16 pipelines): other
    # numbers than an f32 draw, not a rounding of it.
    draws["randn_f16.7"] = torch.randn((1, 4, 8, 8), generator=gen, dtype=torch.float16)
    draws["randn_bf16.8"] = torch.randn((2, 17), generator=gen, dtype=torch.bfloat16)
    draws["randn_f16.9"] = torch.randn((3,), generator=gen, dtype=torch.float16)
    draws["randn.10"] = torch.randn((5,), generator=gen)
    save_file(draws, outputs / "rng.safetensors")


def write_single_file_outputs(fixtures: Path, outputs: Path) -> None:
    """Final latents of diffusers' pipelines loaded with `from_single_file` from
    the CompVis-layout files (configs from the folder named with `config=`, as
    there is no hub here): SD1, SD1 inpainting, SD2 768-v (v-prediction), SD2
    512-base (epsilon) from the same file, SD2 inpainting, SDXL base."""
    from harness_single_file import SINGLE_FILES

    init = Image.open(fixtures / "images" / "init.png").convert("RGB")
    mask = Image.open(fixtures / "images" / "mask.png").convert("L")
    prompt = "a red circle on a white background"
    cases = [(stem, config) for stem, (_, config) in SINGLE_FILES.items()]
    cases.insert(3, ("tiny-sd2", "single-file/configs/tiny-sd2-base"))
    runs, tensors = [], {}
    for stem, config in cases:
        if stem.endswith("inpaint"):
            cls, extra = StableDiffusionInpaintPipeline, dict(image=init, mask_image=mask, strength=1.0)
        elif stem == "tiny-sdxl":
            cls, extra = StableDiffusionXLPipeline, {}
        else:
            cls, extra = StableDiffusionPipeline, {}
        kwargs = {} if cls is StableDiffusionXLPipeline else dict(safety_checker=None, requires_safety_checker=False)
        pipe = cls.from_single_file(str(fixtures / "single-file" / f"{stem}.safetensors"),
                                    config=str(fixtures / config), local_files_only=True, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        key = f"{stem}.{Path(config).name}"
        latents, _ = run_keeping_latents(pipe, prompt, num_inference_steps=4, guidance_scale=7.5, height=64,
                                         width=64, generator=torch.Generator("cpu").manual_seed(0), **extra)
        tensors[key] = latents
        runs.append(dict(key=key, file=f"single-file/{stem}.safetensors", config=config, seed=0, steps=4,
                         guidance_scale=7.5, prompt=prompt, height=64, width=64,
                         scheduler=type(pipe.scheduler).__name__,
                         prediction_type=pipe.scheduler.config.prediction_type,
                         **({"strength": 1.0} if "image" in extra else {})))
    save_file(tensors, outputs / "single_file.safetensors")
    (outputs / "single_file.json").write_text(json.dumps(runs, indent=1) + "\n")


def write_outputs(fixtures: Path, outputs: Path, tmp: Path) -> None:
    write_rng(outputs)
    write_tokenizer_ids(fixtures, outputs)
    write_text_encoders(fixtures, outputs)
    write_unets(fixtures, outputs)
    write_vaes(fixtures, outputs)
    write_txt2img(fixtures, outputs)
    write_txt2img_half(fixtures, outputs)
    write_img2img_inpaint(fixtures, outputs)
    write_img2img_inpaint(fixtures, outputs, half=True)
    write_sdxl(fixtures, outputs)
    write_sd2(fixtures, outputs)
    write_single_file_outputs(fixtures, outputs)
    # The shapes model lives in the sd-cli package. The harness runs from the
    # repository root; scripts/check-fixtures.sh runs it on a copy of
    # reference/ whose parent is not the repository, so look there first.
    here = Path.cwd()
    repo = here if (here / "crates" / "sd-cli" / "shapes").exists() else fixtures.parent.parent
    write_shapes_model(repo, outputs)
    write_layers(outputs)
