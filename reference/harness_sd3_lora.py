"""LoRAs for the tiny SD3 pipeline, in the two formats people have: diffusers'
(PEFT adapters, as its SD3 training script saves them) and kohya's sd-scripts
(`lora_unet_joint_blocks_0_x_block_attn_qkv`: Stability's module names, q/k/v
fused), each with the diffusers run that is its reference."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from harness_sd3 import PROMPT, mmdit_to_sai

RUN = dict(negative_prompt="blurry", guidance_scale=5.0, height=32, width=48, num_images_per_prompt=2,
           num_inference_steps=4, max_sequence_length=16)


def write_sd3_lora(fixtures: Path, outputs: Path) -> None:
    """A LoRA for the tiny SD3 pipeline as diffusers' SD3 training script saves
    it (peft adapters with random non-zero B on the transformer's attention and
    feed-forward projections, and on CLIP-L's q/v; `save_lora_weights`), in
    fixtures/sd3/lora/sd3-peft.safetensors; and diffusers' txt2img with it fused at
    0.8 (`load_lora_weights` + `fuse_lora`), f32, as the folder's f32.txt2img
    run (outputs/sd3_lora.safetensors)."""
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from harness_lora import normalize_adapter_metadata
    from harness_outputs import run_keeping_latents

    folder = fixtures / "sd3" / "pipeline"
    # (its own folder: harness_lora clears fixtures/lora)
    lora_dir = fixtures / "sd3" / "lora"
    lora_dir.mkdir(exist_ok=True)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    torch.manual_seed(30)
    transformer_config = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=[
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2"])
    pipe.transformer.add_adapter(transformer_config)
    te_config = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    pipe.text_encoder.add_adapter(te_config)
    StableDiffusion3Pipeline.save_lora_weights(
        lora_dir, weight_name="sd3-peft.safetensors",
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        transformer_lora_adapter_metadata=transformer_config.to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict())
    normalize_adapter_metadata(lora_dir / "sd3-peft.safetensors", lora_dir)

    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(lora_dir, weight_name="sd3-peft.safetensors")
    pipe.fuse_lora(lora_scale=0.8)
    latents, image = run_keeping_latents(pipe, PROMPT, generator=torch.Generator("cpu").manual_seed(1), **RUN)
    save_file({"f32.txt2img": latents, "f32.txt2img.image": image}, outputs / "sd3_lora.safetensors")


def write_sd3_kohya_lora(fixtures: Path, outputs: Path) -> None:
    """A LoRA in kohya sd-scripts' SD3 layout (fixtures/sd3/lora/sd3-kohya.safetensors):
    random rank-4 `lora_down`/`lora_up`/`alpha` on Stability's module names of the
    tiny transformer (fused `attn.qkv`, `attn.proj`, `mlp.fc1`/`fc2`, the blocks'
    and the final layer's `adaLN_modulation.1`, `context_embedder`) and on CLIP-L's
    q/v (`lora_te1_`). diffusers reads no kohya SD3 file, so its reference is
    composed: each update `scale * alpha / rank * up @ down` is added to the
    weights in Stability's layout (the folder's, through this harness'
    `mmdit_to_sai`), which diffusers' own `convert_sd3_transformer_checkpoint_to_diffusers`
    then converts (splitting q/k/v, swapping the (shift, scale) halves), and
    diffusers' pipeline runs at 0.8 as the PEFT LoRA's run (outputs/sd3_kohya_lora.safetensors)."""
    import json

    from diffusers import StableDiffusion3Pipeline
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from harness_outputs import run_keeping_latents

    folder = fixtures / "sd3" / "pipeline"
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    sai = mmdit_to_sai(pipe.transformer.state_dict(), config)
    sai = {k.removeprefix("model.diffusion_model."): v for k, v in sai.items()}
    wanted = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
    modules = sorted(k.removesuffix(".weight") for k in sai
                     if k.endswith(".weight") and (k.startswith("joint_blocks.") and any(w in k for w in wanted)
                                                   or k in ("final_layer.adaLN_modulation.1.weight",
                                                            "context_embedder.weight")))
    te_modules = [f"text_model.encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    te = pipe.text_encoder.state_dict()
    rank, alpha, scale = 4, 2.0, 0.8
    gen = torch.Generator().manual_seed(31)
    lora, updates = {}, {}
    for prefix, names, weights in [("lora_unet_", modules, sai), ("lora_te1_", te_modules, te)]:
        for module in names:
            out, inp = weights[f"{module}.weight"].shape
            down = torch.randn(rank, inp, generator=gen) * 0.2
            up = torch.randn(out, rank, generator=gen) * 0.2
            key = prefix + module.replace(".", "_")
            lora.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                         f"{key}.alpha": torch.tensor(alpha)})
            # as peft fuses: (B @ A) * (alpha / rank * scale)
            updates[(prefix, module)] = (up @ down) * (alpha / rank * scale)
    save_file(lora, fixtures / "sd3" / "lora" / "sd3-kohya.safetensors")

    for (prefix, module), update in updates.items():
        target = sai if prefix == "lora_unet_" else te
        target[f"{module}.weight"] = target[f"{module}.weight"] + update
    converted = convert_sd3_transformer_checkpoint_to_diffusers({f"model.diffusion_model.{k}": v
                                                                for k, v in sai.items()})
    pipe.transformer.load_state_dict(converted)
    pipe.text_encoder.load_state_dict(te)
    latents, image = run_keeping_latents(pipe, PROMPT, generator=torch.Generator("cpu").manual_seed(1), **RUN)
    save_file({"f32.txt2img": latents, "f32.txt2img.image": image}, outputs / "sd3_kohya_lora.safetensors")
