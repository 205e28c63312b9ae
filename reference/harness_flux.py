"""FLUX.1 (issue 29): tiny FluxTransformer2DModels, one like [dev] (guidance
embedding) and one like [schnell] (none), in fixtures/flux/transformer-*, with
their velocities (outputs/flux_transformer.safetensors) for two images of 12
packed latent tokens (a 8x6 latent: 4x3 tokens of 2x2 patches, ids from
diffusers' own `FluxPipeline._prepare_latent_image_ids`), 5 text tokens, two
timesteps, in f32 and bf16; and the pipeline's packing of a latent into 2x2
patches, back, and its image ids."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=(4, 6, 6))
FLUXES = {"dev": dict(CONFIG, guidance_embeds=True), "schnell": dict(CONFIG, guidance_embeds=False)}


def write_flux_transformer(fixtures: Path, outputs: Path) -> None:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    gen = torch.Generator().manual_seed(29)
    latents = torch.randn(2, 12, 16, generator=gen)
    context = torch.randn(2, 5, 24, generator=gen)
    pooled = torch.randn(2, 12, generator=gen)
    timestep = torch.tensor([0.8125, 0.03125])
    guidance = torch.tensor([3.5, 1.25])
    img_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
    txt_ids = torch.zeros(5, 3)
    tensors = {"flux.latents": latents, "flux.context": context, "flux.pooled": pooled,
               "flux.timestep": timestep, "flux.guidance": guidance, "flux.img_ids": img_ids,
               "flux.txt_ids": txt_ids}
    for seed, (name, config) in enumerate(FLUXES.items(), start=290):
        torch.manual_seed(seed)
        model = FluxTransformer2DModel(**config).eval()
        norms = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, param in model.named_parameters():
                if ".norm_" in key:  # the per-head RMS norms start at exactly 1
                    param.copy_(1 + 0.1 * torch.randn(param.shape, generator=norms))
        folder = fixtures / "flux" / f"transformer-{name}"
        model.save_pretrained(folder)
        for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
            loaded = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=dtype).eval()
            with torch.no_grad():
                out = loaded(hidden_states=latents.to(dtype), encoder_hidden_states=context.to(dtype),
                             pooled_projections=pooled.to(dtype), timestep=timestep.to(dtype),
                             img_ids=img_ids, txt_ids=txt_ids,
                             guidance=guidance.to(dtype) if config["guidance_embeds"] else None).sample
            tensors[f"flux.{name}.{dtype_name}"] = out
    # the pipeline's packing: a (2, 16, 10, 6) latent (an 80x48 image) packed
    # into 2x2 patches and back, with its ids
    latent = torch.randn(2, 16, 10, 6, generator=gen)
    packed = FluxPipeline._pack_latents(latent, 2, 16, 10, 6)
    tensors.update({"pack.latent": latent, "pack.packed": packed,
                    "pack.unpacked": FluxPipeline._unpack_latents(packed, 80, 48, 8),
                    "pack.img_ids": FluxPipeline._prepare_latent_image_ids(2, 5, 3, "cpu", torch.float32)})
    save_file({k: v.contiguous() for k, v in tensors.items()}, outputs / "flux_transformer.safetensors")


def write_flux_pipeline(fixtures: Path, outputs: Path) -> None:
    """Tiny FluxPipelines (fixtures/flux/pipeline-{dev,schnell}): tiny-sd1's CLIP-L
    (a CLIPTextModel, pooled output only), the SD3 fixture's T5 and 16-channel
    VAE, a one-double-block, one-single-block transformer, FLUX's scheduler
    config; and their txt2img runs (outputs/flux_pipeline.safetensors: the final
    packed latents), two images from one generator at 48x32, 3 steps, 16 T5
    tokens, distilled guidance 3.5 for dev, in f32 and bf16 (and one image with
    true CFG: negative prompt "blurry", true_cfg_scale 4, seed 3); and img2img
    (FluxImg2ImgPipeline) at strength 0.6, 4 steps, on images/init-32.png;
    inpainting (FluxInpaintPipeline) with images/mask-32.png at 1.0 and 0.75."""
    import shutil

    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxInpaintPipeline,
                           FluxPipeline,
                           FluxTransformer2DModel)
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from harness_outputs import run_keeping_latents

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    tensors = {}
    for seed, guided in [(300, True), (301, False)]:
        name = "dev" if guided else "schnell"
        folder = fixtures / "flux" / f"pipeline-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=8, guidance_embeds=guided,
            axes_dims_rope=(4, 6, 6)).eval()
        norms = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, param in transformer.named_parameters():
                if ".norm_" in key:
                    param.copy_(1 + 0.1 * torch.randn(param.shape, generator=norms))
        sd3 = fixtures / "sd3" / "pipeline"
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=AutoencoderKL.from_pretrained(sd3 / "vae"),
            text_encoder=CLIPTextModel.from_pretrained(fixtures / "tiny-sd1" / "text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(sd3 / "tokenizer"),
            text_encoder_2=T5EncoderModel.from_pretrained(sd3 / "text_encoder_3"),
            tokenizer_2=T5TokenizerFast.from_pretrained(sd3 / "tokenizer_3"),
            transformer=transformer,
        )
        pipe.save_pretrained(folder)
        for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
            run = FluxPipeline.from_pretrained(folder, torch_dtype=dtype)
            run.text_encoder_2.eval()
            run.set_progress_bar_config(disable=True)
            latents, _ = run_keeping_latents(
                run, "a red circle on a white background", height=32, width=48, num_inference_steps=3,
                guidance_scale=3.5, max_sequence_length=16, num_images_per_prompt=2,
                generator=torch.Generator("cpu").manual_seed(0))
            tensors[f"{name}.{dtype_name}"] = latents
            # true CFG: a negative prompt through the model too, at 4.0
            latents, _ = run_keeping_latents(
                run, "a red circle on a white background", negative_prompt="blurry", true_cfg_scale=4.0,
                height=32, width=48, num_inference_steps=3, guidance_scale=3.5, max_sequence_length=16,
                generator=torch.Generator("cpu").manual_seed(3))
            tensors[f"{name}.{dtype_name}.true_cfg"] = latents
            # img2img (FluxImg2ImgPipeline) at strength 0.6 on images/init-32.png
            img2img = FluxImg2ImgPipeline.from_pretrained(folder, torch_dtype=dtype)
            img2img.set_progress_bar_config(disable=True)
            init = Image.open(fixtures / "images" / "init-32.png").convert("RGB")
            latents, _ = run_keeping_latents(
                img2img, "a red circle on a white background", image=init, strength=0.6, height=32,
                width=32, num_inference_steps=4, guidance_scale=3.5, max_sequence_length=16,
                generator=torch.Generator("cpu").manual_seed(5))
            tensors[f"{name}.{dtype_name}.img2img"] = latents
            # inpainting (FluxInpaintPipeline: the 16-channel blend) at 1.0 and 0.75
            inpaint = FluxInpaintPipeline.from_pretrained(folder, torch_dtype=dtype)
            inpaint.set_progress_bar_config(disable=True)
            mask = Image.open(fixtures / "images" / "mask-32.png").convert("L")
            for strength, seed in [(1.0, 6), (0.75, 7)]:
                latents, _ = run_keeping_latents(
                    inpaint, "a red circle on a white background", image=init, mask_image=mask,
                    strength=strength, height=32, width=32, num_inference_steps=4, guidance_scale=3.5,
                    max_sequence_length=16, generator=torch.Generator("cpu").manual_seed(seed))
                tensors[f"{name}.{dtype_name}.inpaint{int(strength * 100)}"] = latents
    save_file({k: v.contiguous() for k, v in tensors.items()}, outputs / "flux_pipeline.safetensors")


def to_bfl(state: dict, num_layers: int, num_single_layers: int) -> dict:
    """A diffusers FLUX transformer's weights under Black Forest Labs' names
    (flux1-dev.safetensors' layout): the inverse of diffusers'
    `convert_flux_transformer_checkpoint_to_diffusers`, written here."""
    out = {}
    pairs = [("x_embedder", "img_in"), ("context_embedder", "txt_in"),
             ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
             ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
             ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
             ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
             ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
             ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
             ("proj_out", "final_layer.linear")]
    for ours, theirs in pairs:
        for p in ("weight", "bias"):
            if f"{ours}.{p}" in state:
                out[f"{theirs}.{p}"] = state[f"{ours}.{p}"]
    for p in ("weight", "bias"):
        shift_scale = state[f"norm_out.linear.{p}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift_scale[1], shift_scale[0]], dim=0)
    for i in range(num_layers):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for p in ("weight", "bias"):
            out[f"{b}.img_mod.lin.{p}"] = state[f"{d}.norm1.linear.{p}"]
            out[f"{b}.txt_mod.lin.{p}"] = state[f"{d}.norm1_context.linear.{p}"]
            out[f"{b}.img_attn.qkv.{p}"] = torch.cat([state[f"{d}.attn.to_{x}.{p}"] for x in "qkv"])
            out[f"{b}.txt_attn.qkv.{p}"] = torch.cat([state[f"{d}.attn.add_{x}_proj.{p}"] for x in "qkv"])
            out[f"{b}.img_attn.proj.{p}"] = state[f"{d}.attn.to_out.0.{p}"]
            out[f"{b}.txt_attn.proj.{p}"] = state[f"{d}.attn.to_add_out.{p}"]
            out[f"{b}.img_mlp.0.{p}"] = state[f"{d}.ff.net.0.proj.{p}"]
            out[f"{b}.img_mlp.2.{p}"] = state[f"{d}.ff.net.2.{p}"]
            out[f"{b}.txt_mlp.0.{p}"] = state[f"{d}.ff_context.net.0.proj.{p}"]
            out[f"{b}.txt_mlp.2.{p}"] = state[f"{d}.ff_context.net.2.{p}"]
        out[f"{b}.img_attn.norm.query_norm.scale"] = state[f"{d}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = state[f"{d}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = state[f"{d}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = state[f"{d}.attn.norm_added_k.weight"]
    for i in range(num_single_layers):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for p in ("weight", "bias"):
            out[f"{b}.linear1.{p}"] = torch.cat([state[f"{d}.attn.to_{x}.{p}"] for x in "qkv"]
                                                + [state[f"{d}.proj_mlp.{p}"]])
            out[f"{b}.linear2.{p}"] = state[f"{d}.proj_out.{p}"]
            out[f"{b}.modulation.lin.{p}"] = state[f"{d}.norm.linear.{p}"]
        out[f"{b}.norm.query_norm.scale"] = state[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = state[f"{d}.attn.norm_k.weight"]
    return out


def diffusers_conversion(inner_dim: int):
    """diffusers' own `convert_flux_transformer_checkpoint_to_diffusers`, its
    hard-coded full-size width (3072) set to `inner_dim` for a tiny model."""
    import inspect

    from diffusers.loaders import single_file_utils

    source = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in source
    namespace = dict(single_file_utils.__dict__)
    exec(source.replace("inner_dim = 3072", f"inner_dim = {inner_dim}"), namespace)
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]


def write_flux_single_files(fixtures: Path) -> None:
    """The tiny [dev] pipeline's transformer as a BFL single file
    (fixtures/flux/single-file/tiny-flux-dev.safetensors) and its VAE as BFL's
    `ae.safetensors`, each checked by converting it back with diffusers' own
    conversion: every tensor equal."""
    from safetensors.torch import load_file

    folder = fixtures / "flux" / "pipeline-dev" / "transformer"
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    bfl = to_bfl(state, config["num_layers"], config["num_single_layers"])
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    back = diffusers_conversion(inner)(dict(bfl))
    assert set(back) == set(state), sorted(set(back) ^ set(state))
    for key, value in state.items():
        assert torch.equal(back[key], value), key
    out = fixtures / "flux" / "single-file"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in bfl.items()}, out / "tiny-flux-dev.safetensors")

    # BFL's separate ae.safetensors: the VAE in LDM names without a prefix, checked by
    # diffusers' own conversion back
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from harness_single_file import vae_to_ldm

    vae_folder = fixtures / "flux" / "pipeline-dev" / "vae"
    vae = load_file(vae_folder / "diffusion_pytorch_model.safetensors")
    vae_config = json.loads((vae_folder / "config.json").read_text())
    ae = {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(vae, vae_config).items()}
    back = convert_ldm_vae_checkpoint(dict(ae), vae_config)
    assert set(back) == set(vae), sorted(set(back) ^ set(vae))
    for key, value in vae.items():
        assert torch.equal(back[key], value), key
    save_file({k: v.contiguous() for k, v in ae.items()}, out / "ae.safetensors")


# FLUX.1 [dev]'s and [schnell]'s transformer configs (black-forest-labs/FLUX.1-*/transformer/config.json)
FULL = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
            axes_dims_rope=[16, 56, 56])


def write_flux_manifests(manifests: Path) -> None:
    """Every weight name and shape of the full-size FLUX.1 [dev] and [schnell]
    transformers, in diffusers' layout (the model built on the meta device)
    and in Black Forest Labs' (to_bfl on shapes only), the latter checked by
    diffusers' own conversion back (at its real width, 3072)."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    out = manifests / "flux"
    out.mkdir(parents=True, exist_ok=True)
    for name, guided in [("dev", True), ("schnell", False)]:
        config = dict(FULL, guidance_embeds=guided)
        with torch.device("meta"):
            model = FluxTransformer2DModel(**config)
        state = dict(model.state_dict())
        tensors = {k: list(v.shape) for k, v in sorted(state.items())}
        saved = json.loads(model.to_json_string())
        for volatile in ("_diffusers_version", "_name_or_path", "_use_default_values"):
            saved.pop(volatile, None)
        (out / f"transformer_{name}.json").write_text(
            json.dumps({"config": saved, "optional": {}, "tensors": tensors}, indent=1) + "\n")
        bfl = to_bfl(state, config["num_layers"], config["num_single_layers"])
        back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
        assert {k: list(v.shape) for k, v in back.items()} == tensors, name
        single = {"tensors": {k: list(v.shape) for k, v in sorted(bfl.items())}, "optional": {},
                  "diffusers": f"transformer_{name}.json"}
        (out / f"single_file_{name}.json").write_text(json.dumps(single, indent=1) + "\n")
