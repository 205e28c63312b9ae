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


# --- T5 v1.1 (text_encoder_3, tokenizer_3) ------------------------------------

T5_PROMPTS = [
    "a red circle on a white background", "", "A Photo Of A CAT, highly detailed, 8k",
    "Zoë café naïve résumé", "东京 🐱 emoji", "word " * 40,
]
T5_CORPUS = [
    "a red circle on a white background", "a large blue triangle on a black background",
    "a photo of a cat", "portrait of an astronaut, highly detailed, 8k", "a castle at sunset, oil painting",
    "the quick brown fox jumps over the lazy dog", "small green square", "purple and orange shapes",
]


def t5_tokenizer(folder: Path):
    """A tiny Unigram tokenizer in T5's layout (Metaspace, `</s>` appended),
    saved by transformers as tokenizer.json only. Its vocabulary is built,
    not trained (training is not reproducible byte for byte): the special
    tokens, the corpus' words with and without the word-start mark, their
    characters; longer pieces score higher."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted({w for line in T5_CORPUS for w in line.replace(",", " ,").split()})
    chars = sorted({c for w in words for c in w} | {"▁"})
    pieces = [f"▁{w}" for w in words] + words + chars
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, -10.0 + len(p)) for p in dict.fromkeys(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0)
    fast.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def write_t5(fixtures: Path, outputs: Path) -> None:
    """A tiny T5EncoderModel (gated GELU, 3 blocks, 2 heads, the real 32
    buckets up to distance 128) and tokenizer under fixtures/sd3/, with the
    ids SD3's pipeline makes (padding to max_length, truncation) and the
    hidden states in f32, f16 (transformers keeps `wo` in f32) and bf16,
    also for a 160-token input (distances past max_distance)."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer(fixtures / "sd3" / "tokenizer_3")
    config = T5Config(vocab_size=len(tokenizer), d_model=8, d_kv=4, d_ff=16, num_layers=3, num_heads=2,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                      tie_word_embeddings=False)
    torch.manual_seed(6)
    model = T5EncoderModel(config).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("layer_norm"):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
    folder = fixtures / "sd3" / "text_encoder_3"
    model.save_pretrained(folder)
    tensors = {}
    for max_length in (16, 32):
        tensors[f"t5.ids{max_length}"] = tokenizer(T5_PROMPTS, padding="max_length", max_length=max_length,
                                                   truncation=True, add_special_tokens=True,
                                                   return_tensors="pt").input_ids
    long_ids = torch.randint(0, len(tokenizer), (1, 160), generator=gen)
    tensors["t5.long_ids"] = long_ids
    for dtype_name, dtype in [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
        loaded = T5EncoderModel.from_pretrained(folder, torch_dtype=dtype).eval()
        with torch.no_grad():
            tensors[f"t5.{dtype_name}.hidden"] = loaded(tensors["t5.ids32"])[0]
            tensors[f"t5.{dtype_name}.long_hidden"] = loaded(long_ids)[0]
    save_file({k: v.contiguous() for k, v in tensors.items()}, outputs / "sd3_t5.safetensors")
    (outputs / "sd3_t5_prompts.json").write_text(__import__("json").dumps(T5_PROMPTS, ensure_ascii=False) + "\n")


# --- the MMDiT (transformer/) ------------------------------------------------

TINY_MMDIT = dict(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                  num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                  pooled_projection_dim=10, out_channels=16, pos_embed_max_size=12)
MMDITS = {
    "sd3": TINY_MMDIT,  # SD3 Medium (3.0): no qk norm, no dual attention
    "sd35-large": dict(TINY_MMDIT, num_layers=3, qk_norm="rms_norm"),
    "sd35-medium": dict(TINY_MMDIT, num_layers=3, qk_norm="rms_norm", dual_attention_layers=(0, 1)),
}


def write_mmdit(fixtures: Path, outputs: Path) -> None:
    """Tiny SD3Transformer2DModels in the three layouts (fixtures/sd3/transformer-*),
    with their velocities for a 8x6 latent (4x3 patches, cropped from the 12x12
    position table), two timesteps, in f32 and bf16, and with skip_layers."""
    from diffusers import SD3Transformer2DModel

    tensors = {}
    gen = torch.Generator().manual_seed(8)
    latents = torch.randn(2, 16, 8, 6, generator=gen)
    context = torch.randn(2, 7, 12, generator=gen)
    pooled = torch.randn(2, 10, generator=gen)
    timestep = torch.tensor([972.5, 3.25])
    tensors.update({"mmdit.latents": latents, "mmdit.context": context, "mmdit.pooled": pooled,
                    "mmdit.timestep": timestep})
    for seed, (name, config) in enumerate(MMDITS.items(), start=40):
        torch.manual_seed(seed)
        model = SD3Transformer2DModel(**config).eval()
        norms = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, param in model.named_parameters():
                if ".norm_" in key:  # qk RMS norms start at exactly 1
                    param.copy_(1 + 0.1 * torch.randn(param.shape, generator=norms))
        folder = fixtures / "sd3" / f"transformer-{name}"
        model.save_pretrained(folder)
        for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
            loaded = SD3Transformer2DModel.from_pretrained(folder, torch_dtype=dtype).eval()
            with torch.no_grad():
                out = loaded(latents.to(dtype), context.to(dtype), pooled.to(dtype), timestep).sample
                tensors[f"mmdit.{name}.{dtype_name}"] = out
                if dtype_name == "f32":
                    skipped = loaded(latents, context, pooled, timestep, skip_layers=[1]).sample
                    tensors[f"mmdit.{name}.skip1"] = skipped
    save_file({k: v.contiguous() for k, v in tensors.items()}, outputs / "sd3_mmdit.safetensors")


# --- a whole tiny SD3 pipeline -----------------------------------------------

PROMPT = "a red circle on a white background"


def write_sd3_pipeline(fixtures: Path, outputs: Path) -> None:
    """A tiny StableDiffusion3Pipeline folder (fixtures/sd3/pipeline: CLIP-L and
    CLIP-G with projections, a 24-wide T5, a transformer whose joint width is
    T5's, the 16-channel VAE, FlowMatchEuler with shift 3), saved by diffusers;
    and what diffusers makes of it (outputs/sd3_pipeline.*): encode_prompt's
    embeddings with T5 and without it (zeros of 77 tokens), and txt2img final
    latents and images, 32x32, 4 steps, with and without T5. Random weights:
    the images are noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    from harness_models import TINY_CLIP_L, TINY_OPENCLIP_BIGG, text_encoder, tokenizer_folder

    from harness_outputs import run_keeping_latents

    folder = fixtures / "sd3" / "pipeline"
    bpe = fixtures / "tokenizer"
    tokenizer_folder(folder / "tokenizer", bpe, "<|endoftext|>", "json")
    tokenizer_folder(folder / "tokenizer_2", bpe, "!", "json")
    t5_tokenizer(folder / "tokenizer_3")
    torch.manual_seed(9)
    t5 = T5EncoderModel(T5Config(vocab_size=len(T5TokenizerFast.from_pretrained(folder / "tokenizer_3")), d_model=24,
                                 d_kv=4, d_ff=32, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
                                 is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)).eval()
    torch.manual_seed(10)
    transformer = SD3Transformer2DModel(**dict(TINY_MMDIT, sample_size=16, joint_attention_dim=24,
                                               pooled_projection_dim=16)).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(TINY_VAE_SD3, seed=11),
        text_encoder=text_encoder(TINY_CLIP_L, projection=True, seed=12),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder_2=text_encoder(TINY_OPENCLIP_BIGG, projection=True, seed=13),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        text_encoder_3=t5, tokenizer_3=T5TokenizerFast.from_pretrained(folder / "tokenizer_3"),
    )
    pipe.save_pretrained(folder)

    tensors, runs = {}, []
    for name, extra in [("t5", {}), ("no_t5", {"text_encoder_3": None, "tokenizer_3": None})]:
        pipe = StableDiffusion3Pipeline.from_pretrained(folder, **extra)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                PROMPT, PROMPT, PROMPT, negative_prompt="blurry", max_sequence_length=16)
        tensors.update({f"cond.{name}.embeds": embeds, f"cond.{name}.negative": negative,
                        f"cond.{name}.pooled": pooled, f"cond.{name}.negative_pooled": negative_pooled})
        key = f"txt2img.{name}"
        latents, image = run_keeping_latents(pipe, PROMPT, negative_prompt="blurry", num_inference_steps=4,
                                             guidance_scale=5.0, height=32, width=32, max_sequence_length=16,
                                             generator=torch.Generator("cpu").manual_seed(0))
        tensors[key], tensors[f"{key}.image"] = latents, image
        runs.append(dict(key=key, prompt=PROMPT, negative_prompt="blurry", steps=4, guidance_scale=5.0,
                         height=32, width=32, max_sequence_length=16, seed=0, t5=name == "t5"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, outputs / "sd3_pipeline.safetensors")
    (outputs / "sd3_pipeline.json").write_text(__import__("json").dumps(runs, indent=1) + "\n")


# --- whole SD3 runs through diffusers' three pipelines --------------------------

SLG = dict(skip_guidance_layers=[1], skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.2,
           skip_layer_guidance_stop=0.7)


def write_sd3_runs(fixtures: Path, outputs: Path) -> None:
    """What diffusers' StableDiffusion3Pipeline, -Img2ImgPipeline and
    -InpaintPipeline make of the tiny folder (fixtures/sd3/pipeline), in f32
    and bf16 (outputs/sd3_runs.*): txt2img two images from one generator at
    48x32, with skip-layer guidance on layer 1 (steps 1 and 2 of 4), with no
    negative prompt, without guidance; img2img at strength 0.6; inpainting at
    strength 1 and 0.75 (the 16-channel blend; images/init-32.png,
    mask-32.png). The final latents and the
    first image of each. Random weights: the images are noise."""
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline
    from PIL import Image

    from harness_outputs import run_keeping_latents

    folder = fixtures / "sd3" / "pipeline"
    # 32x32 (the tiny VAE's factor is 2; its position table covers 24x24 latents)
    init = Image.open(fixtures / "images" / "init.png").convert("RGB").resize((32, 32), Image.LANCZOS)
    mask = Image.open(fixtures / "images" / "mask.png").convert("L").resize((32, 32), Image.NEAREST)
    init.save(fixtures / "images" / "init-32.png")
    mask.save(fixtures / "images" / "mask-32.png")
    common = dict(num_inference_steps=4, max_sequence_length=16)
    cases = [
        ("txt2img", StableDiffusion3Pipeline, dict(negative_prompt="blurry", guidance_scale=5.0, height=32,
                                                   width=48, num_images_per_prompt=2, seed=1)),
        ("txt2img.slg", StableDiffusion3Pipeline, dict(negative_prompt="blurry", guidance_scale=5.0, height=32,
                                                       width=48, seed=2, **SLG)),
        ("txt2img.no_negative", StableDiffusion3Pipeline, dict(guidance_scale=4.0, height=32, width=32, seed=3)),
        ("txt2img.no_cfg", StableDiffusion3Pipeline, dict(guidance_scale=1.0, height=32, width=32, seed=4)),
        ("img2img", StableDiffusion3Img2ImgPipeline, dict(negative_prompt="blurry", guidance_scale=5.0,
                                                          strength=0.6, height=32, width=32, seed=5)),
        ("inpaint.s100", StableDiffusion3InpaintPipeline, dict(negative_prompt="blurry", guidance_scale=5.0,
                                                               strength=1.0, height=32, width=32, seed=6)),
        ("inpaint.s75", StableDiffusion3InpaintPipeline, dict(negative_prompt="blurry", guidance_scale=5.0,
                                                              strength=0.75, height=32, width=32, seed=7)),
    ]
    tensors, runs = {}, []
    for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        for name, cls, kwargs in cases:
            pipe = cls.from_pretrained(folder, torch_dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
            kwargs = dict(kwargs)
            seed = kwargs.pop("seed")
            images = {}
            if cls is not StableDiffusion3Pipeline:
                images["image"] = init
            if cls is StableDiffusion3InpaintPipeline:
                images["mask_image"] = mask
            key = f"{dtype_name}.{name}"
            latents, image = run_keeping_latents(pipe, PROMPT, generator=torch.Generator("cpu").manual_seed(seed),
                                                 **common, **images, **kwargs)
            tensors[key], tensors[f"{key}.image"] = latents, image
            runs.append(dict(key=key, prompt=PROMPT, seed=seed, dtype=dtype_name, **common,
                             **{k: v for k, v in kwargs.items()}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, outputs / "sd3_runs.safetensors")
    (outputs / "sd3_runs.json").write_text(__import__("json").dumps(runs, indent=1) + "\n")


# --- Stability's single-file layout ---------------------------------------------

def mmdit_to_sai(state: dict, config: dict) -> dict:
    """diffusers' SD3Transformer2DModel weights in Stability's layout
    (`model.diffusion_model.*`): q/k/v fused into `qkv`, the final layer's and
    the last context block's AdaLN rows as (shift, scale). The reverse of
    diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`, written here."""
    last = config["num_layers"] - 1
    swap = lambda t: torch.cat(t.chunk(2, 0)[::-1], 0)  # noqa: E731
    out = {"pos_embed": state["pos_embed.pos_embed"]}
    top = {"pos_embed.proj": "x_embedder.proj", "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
           "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
           "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
           "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "context_embedder": "context_embedder",
           "proj_out": "final_layer.linear"}
    for ours, theirs in top.items():
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = state[f"{ours}.{p}"]
    for p in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{p}"] = swap(state[f"norm_out.linear.{p}"])
    for i in range(config["num_layers"]):
        b, j = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        for p in ("weight", "bias"):
            cat = lambda *names: torch.cat([state[f"{b}.{n}.{p}"] for n in names], 0)  # noqa: E731
            out[f"{j}.x_block.attn.qkv.{p}"] = cat("attn.to_q", "attn.to_k", "attn.to_v")
            out[f"{j}.context_block.attn.qkv.{p}"] = cat("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
            out[f"{j}.x_block.attn.proj.{p}"] = state[f"{b}.attn.to_out.0.{p}"]
            out[f"{j}.x_block.adaLN_modulation.1.{p}"] = state[f"{b}.norm1.linear.{p}"]
            context_ada = state[f"{b}.norm1_context.linear.{p}"]
            out[f"{j}.context_block.adaLN_modulation.1.{p}"] = swap(context_ada) if i == last else context_ada
            out[f"{j}.x_block.mlp.fc1.{p}"] = state[f"{b}.ff.net.0.proj.{p}"]
            out[f"{j}.x_block.mlp.fc2.{p}"] = state[f"{b}.ff.net.2.{p}"]
            if i != last:
                out[f"{j}.context_block.attn.proj.{p}"] = state[f"{b}.attn.to_add_out.{p}"]
                out[f"{j}.context_block.mlp.fc1.{p}"] = state[f"{b}.ff_context.net.0.proj.{p}"]
                out[f"{j}.context_block.mlp.fc2.{p}"] = state[f"{b}.ff_context.net.2.{p}"]
            if i in config.get("dual_attention_layers", ()):
                out[f"{j}.x_block.attn2.qkv.{p}"] = cat("attn2.to_q", "attn2.to_k", "attn2.to_v")
                out[f"{j}.x_block.attn2.proj.{p}"] = state[f"{b}.attn2.to_out.0.{p}"]
        if config.get("qk_norm"):
            for ours, theirs in [("attn.norm_q", "x_block.attn.ln_q"), ("attn.norm_k", "x_block.attn.ln_k"),
                                 ("attn.norm_added_q", "context_block.attn.ln_q"),
                                 ("attn.norm_added_k", "context_block.attn.ln_k"),
                                 ("attn2.norm_q", "x_block.attn2.ln_q"), ("attn2.norm_k", "x_block.attn2.ln_k")]:
                if f"{b}.{ours}.weight" in state:
                    out[f"{j}.{theirs}.weight"] = state[f"{b}.{ours}.weight"]
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def write_sd3_single_files(fixtures: Path, outputs: Path) -> None:
    """Stability's single-file layout of the tiny SD3 pipeline
    (fixtures/single-file/tiny-sd3.safetensors: transformer, VAE, CLIP-L,
    CLIP-G and T5 under `text_encoders.*`; tiny-sd3-no-t5 without T5), and of
    the tiny SD3.5-Medium-like and -Large-like transformers (dual attention,
    qk norms; transformer-only files). Each is checked by diffusers' own
    conversion back to the folder's tensors. Stability's files carry no CLIP-L
    projection (diffusers loads an identity in its place), so the file's runs
    are their own: diffusers' `StableDiffusion3Pipeline.from_single_file`
    txt2img latents and image (outputs/sd3_single_file.safetensors), 48x32,
    two images, as the folder's f32.txt2img run."""
    from diffusers import StableDiffusion3Pipeline
    from diffusers.loaders.single_file_utils import (convert_ldm_vae_checkpoint,
                                                     convert_sd3_transformer_checkpoint_to_diffusers)
    from safetensors.torch import load_file

    from harness_single_file import same, vae_to_ldm

    folder = fixtures / "sd3" / "pipeline"
    out_dir = fixtures / "single-file"
    load = lambda sub, name: load_file(folder / sub / name)  # noqa: E731
    config = lambda sub: __import__("json").loads((folder / sub / "config.json").read_text())  # noqa: E731
    transformer = load("transformer", "diffusion_pytorch_model.safetensors")
    ckpt = mmdit_to_sai(transformer, config("transformer"))
    same("sd3 transformer", transformer, convert_sd3_transformer_checkpoint_to_diffusers(dict(ckpt)))
    vae_state = load("vae", "diffusion_pytorch_model.safetensors")
    vae_ckpt = vae_to_ldm(vae_state, config("vae"))
    same("sd3 vae", vae_state, convert_ldm_vae_checkpoint(dict(vae_ckpt), config("vae")))
    ckpt.update(vae_ckpt)
    for sub, name in [("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")]:
        for k, v in load(sub, "model.safetensors").items():
            # Stability's files have no CLIP-L projection: diffusers' loader
            # puts an identity there (and so does ours)
            if not (name == "clip_l" and k == "text_projection.weight"):
                ckpt[f"text_encoders.{name}.transformer.{k}"] = v
    no_t5 = dict(ckpt)
    t5 = load("text_encoder_3", "model.safetensors")
    # (both embedding names, as transformers 4 saved T5: diffusers' single-file
    # loader does not tie them)
    t5["encoder.embed_tokens.weight"] = t5["shared.weight"].clone()
    for k, v in t5.items():
        ckpt[f"text_encoders.t5xxl.transformer.{k}"] = v
    save_file({k: v.contiguous() for k, v in sorted(ckpt.items())}, out_dir / "tiny-sd3.safetensors")
    save_file({k: v.contiguous() for k, v in sorted(no_t5.items())}, out_dir / "tiny-sd3-no-t5.safetensors")
    for name in ("sd35-medium", "sd35-large"):
        sub = fixtures / "sd3" / f"transformer-{name}"
        state = load_file(sub / "diffusion_pytorch_model.safetensors")
        layout = __import__("json").loads((sub / "config.json").read_text())
        file = mmdit_to_sai(state, layout)
        same(f"{name} transformer", state, convert_sd3_transformer_checkpoint_to_diffusers(dict(file)))
        save_file({k: v.contiguous() for k, v in sorted(file.items())}, out_dir / f"tiny-{name}-transformer.safetensors")

    pipe = StableDiffusion3Pipeline.from_single_file(out_dir / "tiny-sd3.safetensors", config=str(folder))
    pipe.set_progress_bar_config(disable=True)
    # diffusers 0.42 leaves a single file's T5 in training mode (dropout on,
    # a different result each call) with transformers 5: inference mode, as
    # its folder loading does
    for component in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        component.eval()
    from harness_outputs import run_keeping_latents
    latents, image = run_keeping_latents(pipe, PROMPT, negative_prompt="blurry", guidance_scale=5.0, height=32,
                                         width=48, num_images_per_prompt=2, num_inference_steps=4,
                                         max_sequence_length=16, generator=torch.Generator("cpu").manual_seed(1))
    save_file({"f32.txt2img": latents, "f32.txt2img.image": image}, outputs / "sd3_single_file.safetensors")


def write_sd3_single_file_manifests(manifests: Path) -> None:
    """Every tensor name and shape of the transformer in Stability's SD3.5
    Medium and Large single files (`model.diffusion_model.*`), made from the
    diffusers manifests with `mmdit_to_sai` on shapes only (meta tensors),
    checked by diffusers' own conversion back."""
    import json

    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    for name in ("medium", "large"):
        source = json.loads((manifests / "sd35" / f"transformer_{name}.json").read_text())
        state = {k: torch.empty(v, device="meta") for k, v in source["tensors"].items()}
        file = mmdit_to_sai(state, source["config"])
        back = convert_sd3_transformer_checkpoint_to_diffusers(dict(file))
        assert {k: list(v.shape) for k, v in back.items()} == source["tensors"], name
        tensors = {k: list(v.shape) for k, v in sorted(file.items())}
        out = {"tensors": tensors, "optional": {}, "diffusers": f"transformer_{name}.json"}
        (manifests / "sd35" / f"single_file_{name}.json").write_text(json.dumps(out, indent=1) + "\n")


# --- LoRA on SD3 ------------------------------------------------------------------
