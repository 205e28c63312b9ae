"""Single-file (CompVis/LDM layout) checkpoints made from the tiny diffusers models.

The reverse of diffusers' own single-file conversion, written here; each file
is checked by converting it back with diffusers' `convert_ldm_*` functions and
comparing every tensor with the diffusers folder it came from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModelWithProjection

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def sub(name: str, pairs) -> str:
    for new, old in pairs:
        name = name.replace(f".{new}.", f".{old}.")
    return name


def unet_to_ldm(state: dict, config: dict) -> dict:
    out = {}
    n = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("time_embedding."):
            new = key.replace("time_embedding.linear_1", "time_embed.0").replace("time_embedding.linear_2", "time_embed.2")
        elif key.startswith("add_embedding."):
            new = key.replace("add_embedding.linear_1", "label_emb.0.0").replace("add_embedding.linear_2", "label_emb.0.2")
        elif key.startswith("conv_in."):
            new = key.replace("conv_in", "input_blocks.0.0")
        elif key.startswith("conv_norm_out."):
            new = key.replace("conv_norm_out", "out.0")
        elif key.startswith("conv_out."):
            new = key.replace("conv_out", "out.2")
        elif key.startswith("down_blocks."):
            b, kind, idx, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{1 + b * (layers + 1) + layers}.0.op.{rest.removeprefix('conv.')}"
            else:
                block = 1 + b * (layers + 1) + idx
                slot = 0 if kind == "resnets" else 1
                new = sub(f"input_blocks.{block}.{slot}.{rest}", RESNET) if slot == 0 else f"input_blocks.{block}.1.{rest}"
        elif key.startswith("mid_block."):
            kind, idx, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, idx)]
            new = sub(f"middle_block.{slot}.{rest}", RESNET) if kind == "resnets" else f"middle_block.1.{rest}"
        elif key.startswith("up_blocks."):
            b, kind, idx, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            has_attention = config["up_block_types"][b].startswith("CrossAttn")
            if kind == "upsamplers":
                block = b * (layers + 1) + layers
                new = f"output_blocks.{block}.{2 if has_attention else 1}.{rest}"
            else:
                block = b * (layers + 1) + idx
                new = sub(f"output_blocks.{block}.0.{rest}", RESNET) if kind == "resnets" else f"output_blocks.{block}.1.{rest}"
        else:
            raise KeyError(key)
        if key.startswith(("down_blocks.", "mid_block.", "up_blocks.")) and ".resnets." in key:
            new = sub("." + new, RESNET)[1:]
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict, config: dict) -> dict:
    out = {}
    n = len(config["block_out_channels"])
    for key, value in state.items():
        parts = key.split(".")
        new = key
        if ".down_blocks." in key:
            b, kind, idx, rest = int(parts[2]), parts[3], parts[4], ".".join(parts[5:])
            new = f"encoder.down.{b}.downsample.{rest}" if kind == "downsamplers" else f"encoder.down.{b}.block.{idx}.{rest}"
        elif ".up_blocks." in key:
            b, kind, idx, rest = int(parts[2]), parts[3], parts[4], ".".join(parts[5:])
            ldm_b = n - 1 - b
            new = f"decoder.up.{ldm_b}.upsample.{rest}" if kind == "upsamplers" else f"decoder.up.{ldm_b}.block.{idx}.{rest}"
        elif ".mid_block." in key:
            side, kind, idx, rest = parts[0], parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "attentions":
                new = sub(f"{side}.mid.attn_1.{rest}", VAE_ATTENTION)
                if value.ndim == 2:
                    value = value[:, :, None, None]  # LDM's 1x1 convs
            else:
                new = f"{side}.mid.block_{idx + 1}.{rest}"
        new = new.replace("conv_norm_out", "norm_out")
        new = sub("." + new, VAE_RESNET)[1:]
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(state: dict, prefix: str) -> dict:
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()
            if not k.endswith("position_ids")}


def open_clip_to_ldm(state: dict, prefix: str, extra_layer: bool) -> dict:
    """OpenCLIP names; q/k/v fused into in_proj; text_projection as a (width, dim) matrix."""
    out, layers = {}, {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[key.replace("final_layer_norm", "ln_final")] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key.startswith("encoder.layers."):
            i, rest = key.split(".")[2], ".".join(key.split(".")[3:])
            layers.setdefault(int(i), {})[rest] = value
    width = out["token_embedding.weight"].shape[1]
    if "text_projection" not in out:
        out["text_projection"] = torch.eye(width, device=out["token_embedding.weight"].device)  # SD2 files carry one; unused
    out["logit_scale"] = torch.tensor(4.6052, device=out["token_embedding.weight"].device)
    if extra_layer:  # OpenCLIP-H has one layer more than SD2 uses; diffusers drops it
        gen = torch.Generator().manual_seed(24)
        layers[len(layers)] = {k: torch.randn(v.shape, generator=gen).to(v.device) if v.device.type != "meta"
                               else torch.empty_like(v) for k, v in layers[0].items()}
    for i, p in layers.items():
        base = f"transformer.resblocks.{i}."
        out[base + "ln_1.weight"], out[base + "ln_1.bias"] = p["layer_norm1.weight"], p["layer_norm1.bias"]
        out[base + "ln_2.weight"], out[base + "ln_2.bias"] = p["layer_norm2.weight"], p["layer_norm2.bias"]
        out[base + "attn.in_proj_weight"] = torch.cat([p[f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[base + "attn.in_proj_bias"] = torch.cat([p[f"self_attn.{x}_proj.bias"] for x in "qkv"])
        out[base + "attn.out_proj.weight"], out[base + "attn.out_proj.bias"] = p["self_attn.out_proj.weight"], p["self_attn.out_proj.bias"]
        out[base + "mlp.c_fc.weight"], out[base + "mlp.c_fc.bias"] = p["mlp.fc1.weight"], p["mlp.fc1.bias"]
        out[base + "mlp.c_proj.weight"], out[base + "mlp.c_proj.bias"] = p["mlp.fc2.weight"], p["mlp.fc2.bias"]
    return {prefix + k: v for k, v in out.items()}


def same(name: str, ours: dict, theirs: dict) -> None:
    """diffusers' conversion of our LDM file gives back exactly the original tensors."""
    ours = {k: v for k, v in ours.items() if not k.endswith("position_ids")}
    theirs = {k if k.startswith(("text_model.", "text_projection")) or "encoder.layers" not in k else k: v
              for k, v in theirs.items() if not k.endswith("position_ids")}
    norm = lambda d: {k.removeprefix("text_model."): v for k, v in d.items()}
    a, b = norm(ours), norm(theirs)
    assert set(a) == set(b), f"{name}: {sorted(set(a) ^ set(b))[:8]}"
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), f"{name}: {k}"


def load(folder: Path, file: str) -> dict:
    return load_file(folder / file)


# The SD2 files: OpenCLIP-H's text tower has one layer more than SD2 uses
# (diffusers keeps 23 of 24); the tiny one gets a random extra layer the same
# way, so a loader that keeps it computes something else. The SD2 inpainting
# UNet is the SD2 one with a 9-channel input.
SINGLE_FILES = {
    # file stem: (diffusers folder it is made from, config folder for from_single_file)
    "tiny-sd1": ("tiny-sd1", "tiny-sd1"),
    "tiny-sd1-inpaint": ("tiny-sd1-inpaint", "tiny-sd1-inpaint"),
    "tiny-sd2": ("tiny-sd2", "tiny-sd2"),
    "tiny-sd2-inpaint": ("tiny-sd2", "single-file/configs/tiny-sd2-inpaint"),
    "tiny-sdxl": ("tiny-sdxl", "tiny-sdxl"),
}
# Config-only folders (what from_single_file reads besides the file): SD2's
# 512 base (epsilon) and SD2 inpainting (epsilon, 9 channels).
SCHEDULER_SD2_BASE = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}


def config_folder(fixtures: Path, source: str, out: Path, pipeline: str, unet_changes: dict) -> None:
    """A diffusers folder without weights: model_index, configs, tokenizer."""
    import json
    import shutil

    src = fixtures / source
    out.mkdir(parents=True, exist_ok=True)
    index = json.loads((src / "model_index.json").read_text())
    index["_class_name"] = pipeline
    index["scheduler"] = ["diffusers", SCHEDULER_SD2_BASE["_class_name"]]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for sub in ("text_encoder", "vae", "unet", "scheduler"):
        (out / sub).mkdir(exist_ok=True)
    shutil.copyfile(src / "text_encoder" / "config.json", out / "text_encoder" / "config.json")
    shutil.copyfile(src / "vae" / "config.json", out / "vae" / "config.json")
    unet = json.loads((src / "unet" / "config.json").read_text())
    unet.update(unet_changes)
    (out / "unet" / "config.json").write_text(json.dumps(unet, indent=2, sort_keys=True) + "\n")
    (out / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(SCHEDULER_SD2_BASE, indent=2, sort_keys=True) + "\n")
    shutil.copytree(src / "tokenizer", out / "tokenizer", dirs_exist_ok=True)


def sd2_inpaint_unet(fixtures: Path) -> tuple[dict, dict]:
    """The tiny SD2 UNet with a 9-channel input (seeded), and its config."""
    config = dict(UNet2DConditionModel.load_config(fixtures / "tiny-sd2" / "unet"), in_channels=9)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(12)
    model = UNet2DConditionModel(**config).eval()
    return model.state_dict(), dict(model.config)


def write_single_files(fixtures: Path) -> None:
    out_dir = fixtures / "single-file"
    out_dir.mkdir(exist_ok=True)
    config_folder(fixtures, "tiny-sd2", out_dir / "configs" / "tiny-sd2-base", "StableDiffusionPipeline", {})
    config_folder(fixtures, "tiny-sd2", out_dir / "configs" / "tiny-sd2-inpaint",
                  "StableDiffusionInpaintPipeline", {"in_channels": 9})
    for stem, (model, _) in SINGLE_FILES.items():
        root = fixtures / model
        if stem == "tiny-sd2-inpaint":
            unet_state, unet = sd2_inpaint_unet(fixtures)
        else:
            unet = UNet2DConditionModel.load_config(root / "unet")
            unet_state = load(root / "unet", "diffusion_pytorch_model.safetensors")
        vae = AutoencoderKL.load_config(root / "vae")
        vae_state = load(root / "vae", "diffusion_pytorch_model.safetensors")
        te_state = load(root / "text_encoder", "model.safetensors")
        ckpt = {}
        ckpt.update(unet_to_ldm(unet_state, unet))
        ckpt.update(vae_to_ldm(vae_state, vae))
        if model == "tiny-sdxl":
            ckpt.update(clip_to_ldm(te_state, "conditioner.embedders.0.transformer."))
            te2_state = load(root / "text_encoder_2", "model.safetensors")
            ckpt.update(open_clip_to_ldm(te2_state, "conditioner.embedders.1.model.", extra_layer=False))
        elif model == "tiny-sd2":
            ckpt.update(open_clip_to_ldm(te_state, "cond_stage_model.model.", extra_layer=True))
        else:
            ckpt.update(clip_to_ldm(te_state, "cond_stage_model.transformer."))
        # Check against diffusers' own conversion back.
        same(f"{stem} unet", unet_state, convert_ldm_unet_checkpoint(ckpt, dict(unet)))
        same(f"{stem} vae", vae_state, convert_ldm_vae_checkpoint(ckpt, dict(vae)))
        if model == "tiny-sdxl":
            same(f"{stem} te1", te_state, convert_ldm_clip_checkpoint(ckpt, "conditioner.embedders.0.transformer."))
            te2 = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2")
            back = convert_open_clip_checkpoint(te2, ckpt, prefix="conditioner.embedders.1.model.")
            same(f"{stem} te2", te2_state, back)
        elif model != "tiny-sd2":
            same(f"{stem} te", te_state, convert_ldm_clip_checkpoint(ckpt, "cond_stage_model.transformer."))
        save_file({k: v.contiguous() for k, v in sorted(ckpt.items())}, out_dir / f"{stem}.safetensors")


def write_single_file_manifests(manifests: Path) -> None:
    """Every tensor name and shape of the real single-file SD1.5 / SD2.1 / SDXL
    checkpoints, made from the diffusers manifests with the mapping above."""
    import json

    for model in ("sd15", "sd21", "sdxl"):
        def meta(component):
            m = json.loads((manifests / model / f"{component}.json").read_text())
            return {k: torch.empty(v, device="meta") for k, v in m["tensors"].items()}, m["config"]
        unet, unet_config = meta("unet")
        vae, vae_config = meta("vae")
        te, _ = meta("text_encoder")
        ckpt = {}
        ckpt.update(unet_to_ldm(unet, unet_config))
        ckpt.update(vae_to_ldm(vae, vae_config))
        if model == "sdxl":
            ckpt.update(clip_to_ldm(te, "conditioner.embedders.0.transformer."))
            te2, _ = meta("text_encoder_2")
            ckpt.update(open_clip_to_ldm(te2, "conditioner.embedders.1.model.", extra_layer=False))
        elif model == "sd21":
            ckpt.update(open_clip_to_ldm(te, "cond_stage_model.model.", extra_layer=True))
        else:
            ckpt.update(clip_to_ldm(te, "cond_stage_model.transformer."))
        tensors = {k: list(v.shape) for k, v in sorted(ckpt.items())}
        (manifests / model / "single_file.json").write_text(json.dumps({"tensors": tensors}, indent=2, sort_keys=True) + "\n")
