"""LoRA and textual-inversion references for the tiny SD1, SD2 and SDXL models.

Writes random adapter files under fixtures/lora/ in the layouts people
download (kohya/A1111 with diffusers or original LDM module names, PEFT as
diffusers' save_lora_weights writes it, older diffusers attention-processor
files, LyCORIS LoCon with Tucker cores, LoHa, LoKr, and textual-inversion
embeddings in diffusers, A1111 and SDXL form), and outputs/lora.{safetensors,json}:
final latents and decoded images of txt2img runs with them.

References come from diffusers itself wherever it reads the format:
load_lora_weights + fuse_lora(lora_scale=s) (two LoRAs: fuse the first,
unload, load and fuse the second) and load_textual_inversion. diffusers
has no LoHa, LoKr or Tucker LoCon for these models: those references merge
the update computed here by hand (the LyCORIS / AUTOMATIC1111 formulas)
into the weights. Every case must visibly change the base model's output;
this script asserts it. Random weights: the images are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (EulerAncestralDiscreteScheduler, LCMScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness_outputs import run_keeping_latents
from harness_single_file import unet_to_ldm

PROMPT = "a red circle on a white background"
UNET_KINDS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
              "conv1", "conv2", "time_emb_proj", "conv_shortcut", "downsamplers.0.conv")
TE_KINDS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def pipeline(fixtures: Path, model: str):
    cls = StableDiffusionXLPipeline if model == "tiny-sdxl" else StableDiffusionPipeline
    extra = {} if model == "tiny-sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(fixtures / model, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def modules(model: torch.nn.Module, kinds) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of the linear and conv modules an adapter targets, sorted."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(kinds):
            found.append((name, module.weight.detach()))
    return sorted(found)


def randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def lora_factors(gen, weight: torch.Tensor, rank: int, conv_kernel: bool):
    """Random down/up for `weight` with updates about as large as the weight."""
    out, fan_in = weight.shape[0], weight[0].numel()
    if weight.dim() == 4:
        k = weight.shape[2:]
        down = randn(gen, rank, weight.shape[1], *k, scale=fan_in ** -0.5)
        up = randn(gen, out, rank, 1, 1, scale=rank ** -0.5)
    else:
        down = randn(gen, rank, fan_in, scale=fan_in ** -0.5)
        up = randn(gen, out, rank, scale=rank ** -0.5)
    return down, up


def kohya_lora(pipe, seed: int, text_prefixes: dict, unet_names=None, dtype=torch.float32,
               alpha: float = 1.0) -> dict:
    """A kohya file: every targeted module, ranks 2 and 4 alternating, one
    alpha for all (as kohya's trainer writes its network_alpha); UNet names
    underscored (or LDM names via `unet_names`), text encoders under
    `text_prefixes`. (Per-module alphas are exercised by the LyCORIS files:
    diffusers 0.42 drops a kohya file's per-module alphas for attention
    projections, whose converted names never match its alpha patterns.)"""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    groups = [("lora_unet_", pipe.unet, UNET_KINDS, unet_names)]
    groups += [(prefix, getattr(pipe, attr), TE_KINDS, None) for attr, prefix in text_prefixes.items()]
    i = 0
    for prefix, model, kinds, rename in groups:
        for name, weight in modules(model, kinds):
            rank = 2 if i % 2 else 4
            down, up = lora_factors(gen, weight, rank, True)
            name = rename(name) if rename else name
            key = prefix + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = down.to(dtype)
            state[f"{key}.lora_up.weight"] = up.to(dtype)
            state[f"{key}.alpha"] = torch.tensor(alpha)
            i += 1
    return state


def ldm_names(fixtures: Path):
    """diffusers UNet module name -> original LDM name, for tiny-sdxl."""
    config = json.loads((fixtures / "tiny-sdxl" / "unet" / "config.json").read_text())
    keys = load_file(fixtures / "tiny-sdxl" / "unet" / "diffusion_pytorch_model.safetensors").keys()
    mapped = unet_to_ldm({k: k for k in keys}, config)
    names = {v.removesuffix(".weight"): k.removeprefix("model.diffusion_model.").removesuffix(".weight")
             for k, v in mapped.items() if v.endswith(".weight")}
    return lambda name: names[name]


def attention_processor_lora(pipe, seed: int) -> tuple[dict, dict]:
    """diffusers' oldest form (save_attn_procs): UNet attention only, no
    prefix, no alpha. (diffusers 0.42 loads such a file without error but
    applies nothing, so the reference merges up @ down by hand.)"""
    gen = torch.Generator().manual_seed(seed)
    state, updates = {}, {}
    for name, weight in modules(pipe.unet, ("to_q", "to_k", "to_v", "to_out.0")):
        block, proj = name.rsplit(".", 1) if not name.endswith("to_out.0") else (name[: -len(".to_out.0")], "to_out")
        down, up = lora_factors(gen, weight, 4, False)
        state[f"{block}.processor.{proj}_lora.down.weight"] = down
        state[f"{block}.processor.{proj}_lora.up.weight"] = up
        updates[name + ".weight"] = (up @ down, 1.0)
    return state, updates


def peft_lora(pipe, folder: Path, name: str, seed: int, text: bool) -> Path:
    """A LoRA as diffusers' training scripts save it: peft adapters with random
    (non-zero) B, written by save_lora_weights with the adapter metadata."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet_config = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False,
                             target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"])
    pipe.unet.add_adapter(unet_config)
    kwargs = dict(unet_lora_layers=get_peft_model_state_dict(pipe.unet), unet_lora_adapter_metadata=unet_config.to_dict())
    if text:
        te_config = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "v_proj", "fc1"])
        pipe.text_encoder.add_adapter(te_config)
        kwargs.update(text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
                      text_encoder_lora_adapter_metadata=te_config.to_dict())
    type(pipe).save_lora_weights(folder, weight_name=f"{name}.safetensors", **kwargs)
    path = folder / f"{name}.safetensors"
    normalize_adapter_metadata(path, folder)
    return path


def normalize_adapter_metadata(path: Path, folder: Path) -> None:
    """A saved LoRA's adapter metadata made reproducible: peft keeps
    target_modules as a set: sort it, or each run writes another order
    (string hashing is randomised per process); and the model's path must
    not depend on where the repository is."""
    with safe_open(path, "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    adapter = json.loads(metadata["lora_adapter_metadata"])
    for key, value in adapter.items():
        if key.endswith(".target_modules") and isinstance(value, list):
            adapter[key] = sorted(value)
        # transformers records where the model was loaded from: no absolute paths
        if key.endswith(".base_model_name_or_path") and isinstance(value, str):
            adapter[key] = Path(value).relative_to(folder.parent).as_posix()
    # One metadata entry only: safetensors writes a header map in hash order,
    # so two entries come out in either order ("format": "pt" is not needed
    # to load a LoRA).
    save_file(tensors, path, metadata={"lora_adapter_metadata": json.dumps(adapter, indent=2, sort_keys=True)})


def lycoris(pipe, seed: int, kind: str) -> tuple[dict, dict]:
    """A LyCORIS file (`locon-tucker`, `loha`, `lokr`) on the UNet's attention
    and resnet convs, and the update per diffusers weight name, computed here."""
    gen = torch.Generator().manual_seed(seed)
    state, updates = {}, {}
    for i, (name, weight) in enumerate(modules(pipe.unet, ("to_q", "to_v", "proj_in", "ff.net.2", "conv1", "conv2"))):
        key = "lora_unet_" + name.replace(".", "_")
        out, fan_in, conv = weight.shape[0], weight[0].numel(), weight.dim() == 4 and weight.shape[2] > 1
        rank, alpha = 2 + i % 3, 1.0 + i % 2
        if kind == "locon-tucker":
            if not conv:
                continue
            down = randn(gen, rank, weight.shape[1], 1, 1, scale=weight.shape[1] ** -0.5)
            mid = randn(gen, rank, rank, *weight.shape[2:], scale=0.5)
            up = randn(gen, out, rank, 1, 1, scale=rank ** -0.5)
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_mid.weight": mid,
                          f"{key}.lora_up.weight": up})
            update = torch.einsum("nmkl,in,mj->ijkl", mid, up.flatten(1), down.flatten(1))
            scale = alpha / rank
        elif kind == "loha":
            parts = {n: randn(gen, *s, scale=s[0] ** -0.5) for n, s in
                     [("hada_w1_a", (out, rank)), ("hada_w1_b", (rank, fan_in)),
                      ("hada_w2_a", (out, rank)), ("hada_w2_b", (rank, fan_in))]}
            state.update({f"{key}.{n}": t for n, t in parts.items()})
            update = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
            scale = alpha / rank
        else:  # lokr: w1 (2, 2) whole, w2 = a @ b of the rest
            a, b = 2, 2 if weight.shape[1] % 2 == 0 else 1
            if out % a:
                continue
            c, d = out // a, fan_in // b
            w1 = randn(gen, a, b)
            w2a, w2b = randn(gen, c, rank, scale=rank ** -0.5), randn(gen, rank, d, scale=d ** -0.5)
            state.update({f"{key}.lokr_w1": w1, f"{key}.lokr_w2_a": w2a, f"{key}.lokr_w2_b": w2b})
            update = torch.kron(w1, w2a @ w2b)
            scale = alpha / rank
        state[f"{key}.alpha"] = torch.tensor(alpha)
        updates[name + ".weight"] = (update.reshape(weight.shape), scale)
    return state, updates


def merge_by_hand(pipe, updates: dict, scale: float) -> None:
    params = dict(pipe.unet.named_parameters())
    with torch.no_grad():
        for name, (update, own_scale) in updates.items():
            params[name].add_((update * (own_scale * scale)).to(params[name].dtype))


def embedding_files(folder: Path, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # diffusers learned_embeds: one key, the token
    save_file({"<red-thing>": randn(gen, 1, 8)}, folder / "learned_embeds.safetensors")
    # A1111: emb_params, three vectors, the token is the file stem
    save_file({"emb_params": randn(gen, 3, 8)}, folder / "shiny-style.safetensors")
    # SDXL: clip_l (tiny CLIP-L width 8) and clip_g (tiny bigG width 12), two vectors
    save_file({"clip_l": randn(gen, 2, 8), "clip_g": randn(gen, 2, 12)}, folder / "xl-style.safetensors")


def write_lora(fixtures: Path, outputs: Path) -> None:
    folder = fixtures / "lora"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    hand_updates = {}
    sd1, sd2, sdxl = (pipeline(fixtures, m) for m in ("tiny-sd1", "tiny-sd2", "tiny-sdxl"))
    save_file(kohya_lora(sd1, 10, {"text_encoder": "lora_te_"}), folder / "sd1-kohya.safetensors")
    save_file(kohya_lora(sd1, 11, {}, dtype=torch.float16), folder / "sd1-kohya-unet-f16.safetensors")
    state, hand_updates["attn-procs"] = attention_processor_lora(sd1, 12)
    save_file(state, folder / "sd1-attn-procs.safetensors")
    save_file(kohya_lora(sd2, 13, {"text_encoder": "lora_te_"}, alpha=2.0), folder / "sd2-kohya.safetensors")
    save_file(kohya_lora(sdxl, 14, {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
                         unet_names=ldm_names(fixtures), alpha=3.0), folder / "sdxl-kohya-ldm.safetensors")
    save_file(kohya_lora(sdxl, 15, {"text_encoder_2": "lora_te2_"}), folder / "sdxl-kohya.safetensors")
    for kind, seed in [("locon-tucker", 16), ("loha", 17), ("lokr", 18)]:
        state, hand_updates[kind] = lycoris(sd1, seed, kind)
        save_file(state, folder / f"sd1-{kind}.safetensors")
    peft_lora(pipeline(fixtures, "tiny-sd1"), folder, "sd1-peft", 19, text=True)
    peft_lora(pipeline(fixtures, "tiny-sdxl"), folder, "sdxl-peft", 20, text=False)
    embedding_files(folder, 21)

    # (key, model, [(file, scale)], embeddings [(file, token)], prompt)
    cases = [
        ("sd1.base", "tiny-sd1", [], [], PROMPT),
        ("sd1.kohya", "tiny-sd1", [("sd1-kohya", 1.0)], [], PROMPT),
        ("sd1.kohya.scale0.6", "tiny-sd1", [("sd1-kohya", 0.6)], [], PROMPT),
        ("sd1.kohya-f16", "tiny-sd1", [("sd1-kohya-unet-f16", 0.8)], [], PROMPT),
        ("sd1.attn-procs", "tiny-sd1", [("sd1-attn-procs", 1.0)], [], PROMPT),
        ("sd1.peft", "tiny-sd1", [("sd1-peft", 0.7)], [], PROMPT),
        ("sd1.two", "tiny-sd1", [("sd1-kohya", 0.5), ("sd1-peft", 1.2)], [], PROMPT),
        ("sd1.locon-tucker", "tiny-sd1", [("sd1-locon-tucker", 1.0)], [], PROMPT),
        ("sd1.loha", "tiny-sd1", [("sd1-loha", 0.9)], [], PROMPT),
        ("sd1.lokr", "tiny-sd1", [("sd1-lokr", 1.0)], [], PROMPT),
        # written by this project's trainer (scripts/train-fixture-lora.sh): diffusers must read it
        ("sd1.trained", "tiny-sd1", [("../lora-trained/sd1-trained", 1.0)], [], "a red square"),
        ("sd1.ti-diffusers", "tiny-sd1", [], [("learned_embeds", None)], "a <red-thing> on a white background"),
        ("sd1.ti-a1111", "tiny-sd1", [], [("shiny-style", None)], "a red circle, shiny-style"),
        ("sd2.base", "tiny-sd2", [], [], PROMPT),
        ("sd2.kohya", "tiny-sd2", [("sd2-kohya", 1.0)], [], PROMPT),
        ("sdxl.base", "tiny-sdxl", [], [], PROMPT),
        ("sdxl.kohya-ldm", "tiny-sdxl", [("sdxl-kohya-ldm", 1.0)], [], PROMPT),
        ("sdxl.kohya", "tiny-sdxl", [("sdxl-kohya", 0.75)], [], PROMPT),
        ("sdxl.peft", "tiny-sdxl", [("sdxl-peft", 1.0)], [], PROMPT),
        ("sdxl.ti", "tiny-sdxl", [], [("xl-style", "<xl>")], "a <xl> circle"),
    ]
    # Few-step settings: LCM-LoRA (a LoRA + the LCM sampler, guidance 1, 4
    # steps) and SD-Turbo / SDXL-Turbo (Euler ancestral, trailing spacing,
    # guidance 0, 1 step). Our sampler names, with diffusers' classes.
    few_step = {
        "sd1.lcm-lora": ("lcm", LCMScheduler, {}, 1.0, 4),
        "sd1.turbo": ("euler-a", EulerAncestralDiscreteScheduler, {"timestep_spacing": "trailing"}, 0.0, 1),
        "sdxl.turbo": ("euler-a", EulerAncestralDiscreteScheduler, {"timestep_spacing": "trailing"}, 0.0, 1),
    }
    cases += [
        ("sd1.lcm-lora", "tiny-sd1", [("sd1-peft", 1.0)], [], PROMPT),
        ("sd1.turbo", "tiny-sd1", [], [], PROMPT),
        ("sdxl.turbo", "tiny-sdxl", [], [], PROMPT),
    ]
    tensors, runs, base = {}, [], {}
    for key, model, loras, embeddings, prompt in cases:
        pipe = pipeline(fixtures, model)
        for i, (stem, scale) in enumerate(loras):
            kind = stem.removeprefix("sd1-")
            if kind in hand_updates:
                merge_by_hand(pipe, hand_updates[kind], scale)
                continue
            if i > 0:
                pipe.unload_lora_weights()
            path = folder / f"{stem}.safetensors"
            pipe.load_lora_weights(path.parent, weight_name=path.name)
            pipe.fuse_lora(lora_scale=scale)
        for stem, token in embeddings:
            path = folder / f"{stem}.safetensors"
            if model == "tiny-sdxl":
                state = load_file(path)
                pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                            tokenizer=pipe.tokenizer)
                pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                            tokenizer=pipe.tokenizer_2)
            else:
                pipe.load_textual_inversion(str(path), token=token or (None if stem == "learned_embeds" else stem))
        guidance, steps, extra = 5.0 if model == "tiny-sdxl" else 7.5, 4, {}
        if key in few_step:
            sampler, cls, overrides, guidance, steps = few_step[key]
            pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
            extra = dict(scheduler=sampler, **overrides)
        latents, image = run_keeping_latents(pipe, prompt, num_inference_steps=steps, guidance_scale=guidance,
                                             height=64, width=64, generator=torch.Generator("cpu").manual_seed(0))
        family = key.split(".")[0]
        if key.endswith(".base"):
            base[family] = latents
        elif key not in few_step:
            change = (latents - base[family]).abs().max().item()
            assert change > 0.05, f"{key} barely changes the output ({change})"
        tensors[key], tensors[f"{key}.image"] = latents, image
        runs.append(dict(key=key, model=model,
                         loras=[[str(Path("lora", f"{s}.safetensors")).replace("lora/../", ""), sc] for s, sc in loras],
                         embeddings=[[f"lora/{s}.safetensors", t] for s, t in embeddings], prompt=prompt,
                         seed=0, steps=steps, guidance_scale=guidance, height=64, width=64, **extra))
    save_file(tensors, outputs / "lora.safetensors")
    (outputs / "lora.json").write_text(json.dumps(runs, indent=1) + "\n")
