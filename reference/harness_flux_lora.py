"""LoRAs for the tiny FLUX.1 [dev] pipeline in the formats people download, each
loaded and fused by diffusers (`load_lora_weights` + `fuse_lora(lora_scale=0.8)`):

- `peft`: diffusers' own (peft adapters saved by `FluxPipeline.save_lora_weights`,
  alphas in the `lora_adapter_metadata`);
- `ai-toolkit`: the same names without metadata (alpha = rank);
- `kohya`: sd-scripts' `lora_unet_double_blocks_0_img_attn_qkv` (BFL's module names,
  q/k/v and the single blocks' q/k/v/MLP input fused) with `alpha`, and `lora_te1_` for CLIP-L;
- `comfyui`: the kohya file under ComfyUI's names (`diffusion_model.double_blocks.0...`,
  `text_encoders.clip_l.transformer...`), so the same reference;
- `xlabs`: XLabs' attention-processor LoRAs (`double_blocks.0.processor.qkv_lora1.down.weight`);
- `bfl`: Black Forest Labs' module names with PEFT's `lora_A`/`lora_B` (the form of their
  own LoRA files; diffusers reads it only for Control LoRAs, so its reference is composed:
  the harness maps it to diffusers' names as diffusers' Control-LoRA converter does, A copied
  to each part of a fused projection and B split by rows, and diffusers loads that).

The reference (outputs/flux_lora.safetensors) is every weight diffusers' fuse changed,
`{format}.{transformer|text_encoder}.{name}`, in f32, and for `kohya-bf16` (the kohya file in
bf16, as such files usually are) in the bf16 pipeline; and the kohya LoRA's whole f32 txt2img run.

diffusers' kohya converter is written for the full-size model (19 + 38 blocks, a single
block's fused input split as 3072/3072/3072/12288): for the tiny model the harness runs
diffusers' own function with those widths replaced by the tiny model's (its source, edited
in that one place), so every other step (alpha folded into the factors as
`scale_down`/`scale_up`, A copied to each part, B split) is diffusers' code."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

SCALE = 0.8
PROMPT = "a red circle on a white background"
RUN = dict(height=32, width=48, num_inference_steps=3, guidance_scale=3.5, max_sequence_length=16,
           num_images_per_prompt=2)

# BFL module -> diffusers modules (q/k/v fused in BFL's double blocks; a single block's
# linear1 is q, k, v and the MLP's input)
DOUBLE = {
    "img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "img_attn.proj": ["attn.to_out.0"], "txt_attn.proj": ["attn.to_add_out"],
    "img_mlp.0": ["ff.net.0.proj"], "img_mlp.2": ["ff.net.2"],
    "txt_mlp.0": ["ff_context.net.0.proj"], "txt_mlp.2": ["ff_context.net.2"],
    "img_mod.lin": ["norm1.linear"], "txt_mod.lin": ["norm1_context.linear"],
}
SINGLE = {"linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "linear2": ["proj_out"],
          "modulation.lin": ["norm.linear"]}
CLIP = [f"text_model.encoder.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj",
                                                                          "mlp.fc1")]


def bfl_modules(transformer) -> dict[str, tuple[list[str], list[int]]]:
    """Every BFL linear module of the blocks: its diffusers parts and their rows."""
    weights = transformer.state_dict()
    out = {}
    for i in range(transformer.config.num_layers):
        for bfl, parts in DOUBLE.items():
            names = [f"transformer_blocks.{i}.{p}" for p in parts]
            out[f"double_blocks.{i}.{bfl}"] = (names, [weights[f"{n}.weight"].shape[0] for n in names])
    for i in range(transformer.config.num_single_layers):
        for bfl, parts in SINGLE.items():
            names = [f"single_transformer_blocks.{i}.{p}" for p in parts]
            out[f"single_blocks.{i}.{bfl}"] = (names, [weights[f"{n}.weight"].shape[0] for n in names])
    return out


def tiny_kohya_converter(inner: int):
    """diffusers' `_convert_kohya_flux_lora_to_diffusers` with the single blocks'
    full-size split widths replaced by the tiny model's."""
    from diffusers.loaders import lora_conversion_utils as utils

    source = inspect.getsource(utils._convert_kohya_flux_lora_to_diffusers)
    full = "dims=[3072, 3072, 3072, 12288]"
    assert source.count(full) == 1, "diffusers' kohya FLUX converter changed: re-check the harness"
    namespace = dict(vars(utils))
    exec(source.replace(full, f"dims=[{inner}, {inner}, {inner}, {4 * inner}]"), namespace)
    return namespace["_convert_kohya_flux_lora_to_diffusers"]


def random_kohya(transformer, clip_weights, gen) -> dict:
    """A kohya file: rank 4 with alpha 3 (scale 0.75: the factors are rescaled, rounded)
    on the transformer's blocks, the fused ones with a bf16 alpha 2 and rank 3; CLIP-L's
    q/v/fc1 with alpha 2, rank 4."""
    weights = transformer.state_dict()
    state = {}
    for bfl, (names, rows) in bfl_modules(transformer).items():
        rank, alpha = (3, torch.tensor(2.0, dtype=torch.bfloat16)) if len(names) > 1 else (4, torch.tensor(3.0))
        inp = weights[f"{names[0]}.weight"].shape[1]
        key = "lora_unet_" + bfl.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn(rank, inp, generator=gen) * 0.2
        state[f"{key}.lora_up.weight"] = torch.randn(sum(rows), rank, generator=gen) * 0.2
        state[f"{key}.alpha"] = alpha
    for module in CLIP:
        out, inp = clip_weights[f"{module.removeprefix('text_model.')}.weight"].shape
        key = "lora_te1_" + module.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn(4, inp, generator=gen) * 0.2
        state[f"{key}.lora_up.weight"] = torch.randn(out, 4, generator=gen) * 0.2
        state[f"{key}.alpha"] = torch.tensor(2.0)
    return state


def comfyui_names(kohya: dict, transformer) -> dict:
    """The kohya file as ComfyUI names it (dotted module paths under
    `diffusion_model.` and `text_encoders.clip_l.transformer.`)."""
    dotted = {"lora_unet_" + m.replace(".", "_"): "diffusion_model." + m for m in bfl_modules(transformer)}
    dotted.update({"lora_te1_" + m.replace(".", "_"): "text_encoders.clip_l.transformer." + m for m in CLIP})
    out = {}
    for key, value in kohya.items():
        module, part = key.split(".", 1)
        out[f"{dotted[module]}.{part}"] = value
    return out


def random_xlabs(transformer, gen) -> dict:
    """XLabs' processor LoRAs: rank 4, no alpha, on the double blocks' image (1) and
    text (2) q/k/v and output projections and the single blocks' q/k/v and output."""
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    state = {}
    modules = [(f"double_blocks.{i}.processor.{m}{s}", rows) for i in range(transformer.config.num_layers)
               for s in ("1", "2") for m, rows in (("qkv_lora", 3 * dim), ("proj_lora", dim))]
    modules += [(f"single_blocks.{i}.processor.{m}", rows) for i in range(transformer.config.num_single_layers)
                for m, rows in (("qkv_lora", 3 * dim), ("proj_lora", dim))]
    for module, rows in modules:
        # (a single block's output projection takes the attention and the MLP: 5 * dim)
        inp = 5 * dim if module.endswith("processor.proj_lora") else dim
        state[f"{module}.down.weight"] = torch.randn(4, inp, generator=gen) * 0.2
        state[f"{module}.up.weight"] = torch.randn(rows, 4, generator=gen) * 0.2
    return state


def random_bfl(transformer, gen) -> tuple[dict, dict]:
    """A LoRA in BFL's names with lora_A/lora_B (rank 4) on the blocks' linear modules,
    and the same LoRA in diffusers' names (A copied to each part, B split by rows)."""
    weights = transformer.state_dict()
    bfl, diffusers = {}, {}
    for module, (names, rows) in bfl_modules(transformer).items():
        a = torch.randn(4, weights[f"{names[0]}.weight"].shape[1], generator=gen) * 0.2
        b = torch.randn(sum(rows), 4, generator=gen) * 0.2
        bfl[f"{module}.lora_A.weight"], bfl[f"{module}.lora_B.weight"] = a, b
        for name, part in zip(names, torch.split(b, rows, dim=0)):
            diffusers[f"transformer.{name}.lora_A.weight"] = a
            diffusers[f"transformer.{name}.lora_B.weight"] = part.contiguous()
    return bfl, diffusers


def write_peft(pipe, lora_dir: Path, with_metadata: bool, seed: int) -> Path:
    """A peft LoRA (rank 4, alpha 2 on the transformer; rank 2, alpha 4 on CLIP-L) as
    diffusers saves it; without metadata it is ai-toolkit's form (alpha = rank)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from harness_lora import normalize_adapter_metadata

    torch.manual_seed(seed)
    transformer_config = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=[
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "proj_mlp", "proj_out",
        "norm1.linear", "norm.linear"])
    te_config = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    pipe.transformer.add_adapter(transformer_config)
    pipe.text_encoder.add_adapter(te_config)
    transformer_layers = get_peft_model_state_dict(pipe.transformer)
    te_layers = get_peft_model_state_dict(pipe.text_encoder)
    name = "flux-peft.safetensors" if with_metadata else "flux-ai-toolkit.safetensors"
    if with_metadata:
        type(pipe).save_lora_weights(
            lora_dir, weight_name=name, transformer_lora_layers=transformer_layers,
            text_encoder_lora_layers=te_layers, transformer_lora_adapter_metadata=transformer_config.to_dict(),
            text_encoder_lora_adapter_metadata=te_config.to_dict())
        normalize_adapter_metadata(lora_dir / name, lora_dir)
    else:
        state = {f"transformer.{k}": v for k, v in transformer_layers.items()}
        state.update({f"text_encoder.{k}": v for k, v in te_layers.items()})
        save_file({k: v.contiguous() for k, v in state.items()}, lora_dir / name)
    return lora_dir / name


def write_flux_loras(fixtures: Path, outputs: Path) -> None:
    """Writes fixtures/flux/lora/flux-{format}.safetensors and outputs/flux_lora.safetensors."""
    from diffusers import FluxPipeline
    from diffusers.loaders import lora_pipeline

    from harness_outputs import run_keeping_latents

    folder = fixtures / "flux" / "pipeline-dev"
    lora_dir = fixtures / "flux" / "lora"
    shutil.rmtree(lora_dir, ignore_errors=True)
    lora_dir.mkdir()
    reference = FluxPipeline.from_pretrained(folder)
    transformer = reference.transformer
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    clip_weights = reference.text_encoder.state_dict()

    files = {"peft": write_peft(FluxPipeline.from_pretrained(folder), lora_dir, True, 40),
             "ai-toolkit": write_peft(FluxPipeline.from_pretrained(folder), lora_dir, False, 41)}
    gen = torch.Generator().manual_seed(42)
    kohya = random_kohya(transformer, clip_weights, gen)
    save_file(kohya, lora_dir / "flux-kohya.safetensors")
    save_file(comfyui_names(kohya, transformer), lora_dir / "flux-comfyui.safetensors")
    save_file(random_xlabs(transformer, gen), lora_dir / "flux-xlabs.safetensors")
    bfl, bfl_as_diffusers = random_bfl(transformer, gen)
    save_file(bfl, lora_dir / "flux-bfl.safetensors")
    files.update({f: lora_dir / f"flux-{f}.safetensors" for f in ("kohya", "comfyui", "xlabs")})

    # bf16, as kohya files usually are (alphas too), into the bf16 pipeline
    save_file({k: v.to(torch.bfloat16) for k, v in kohya.items()}, lora_dir / "flux-kohya-bf16.safetensors")
    files["kohya-bf16"] = lora_dir / "flux-kohya-bf16.safetensors"

    lora_pipeline._convert_kohya_flux_lora_to_diffusers = tiny_kohya_converter(inner)
    tensors = {}
    sources = {"peft": files["peft"], "ai-toolkit": files["ai-toolkit"], "bfl": bfl_as_diffusers,
               **{f: converted(FluxPipeline, files[f]) for f in ("kohya", "comfyui", "xlabs", "kohya-bf16")}}
    for name, source in sources.items():
        dtype = torch.bfloat16 if name.endswith("bf16") else torch.float32
        pipe = FluxPipeline.from_pretrained(folder, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        base = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()}
                for c in ("transformer", "text_encoder")}
        if isinstance(source, dict):
            pipe.load_lora_weights(source)
        else:
            pipe.load_lora_weights(lora_dir, weight_name=source.name)
        # (FLUX's fuse_lora fuses the transformer alone unless asked)
        pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=SCALE)
        pipe.unload_lora_weights()
        changed = 0
        for component in ("transformer", "text_encoder"):
            for key, value in getattr(pipe, component).state_dict().items():
                if not torch.equal(value, base[component][key]):
                    tensors[f"{name}.{component}.{key}"] = value.contiguous()
                    changed += 1
        assert changed > 0, f"{name}: diffusers changed no weight"
        if name == "kohya":
            latents, _ = run_keeping_latents(pipe, PROMPT, generator=torch.Generator("cpu").manual_seed(0), **RUN)
            tensors["kohya.f32.txt2img"] = latents
    save_file(tensors, outputs / "flux_lora.safetensors")
    # the whole run's model evaluations, for the error model (the weights are one each)
    run = [{"key": "kohya.f32.txt2img", "steps": RUN["num_inference_steps"], "dtype": "f32"}]
    (outputs / "flux_lora.json").write_text(json.dumps(run, indent=1) + "\n")


def converted(pipeline_class, path: Path) -> dict:
    """diffusers' conversion of a kohya, ComfyUI or XLabs file (`lora_state_dict`), with
    the text encoder's keys renamed for transformers 5: the converter writes the old
    `text_model.…self_attn.to_q_lora.down.weight` names, which transformers 5's CLIP (no
    `text_model.` in its state dict) reports unexpected and drops; the values (alpha
    folded in as diffusers folds it) are diffusers'."""
    import re

    renamed = {}
    for key, value in pipeline_class.lora_state_dict(str(path)).items():
        if key.startswith("text_encoder."):
            key = key.replace("text_encoder.text_model.", "text_encoder.")
            key = re.sub(r"self_attn\.to_(q|k|v)_lora\.(down|up)\.weight", r"self_attn.\1_proj.lora_\2.weight", key)
            key = re.sub(r"self_attn\.to_out_lora\.(down|up)\.weight", r"self_attn.out_proj.lora_\1.weight", key)
            key = re.sub(r"\.lora_linear_layer\.(down|up)\.weight", r".lora_\1.weight", key)
            key = key.replace(".lora_down.weight", ".lora_A.weight").replace(".lora_up.weight", ".lora_B.weight")
        renamed[key] = value
    return renamed
