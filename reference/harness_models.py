"""Tiny random-weight models in the diffusers folder layout, and full-size weight manifests."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
import inspect

from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, SD3Transformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# ---------------------------------------------------------------------------
# Tiny configs. The text encoders keep the real 49408-token vocabulary (the
# tokenizer is the real one) but are 8 wide, so each weighs about 1.6 MB.
# ---------------------------------------------------------------------------

TINY_CLIP_L = dict(  # SD1.x / SDXL text_encoder: CLIP ViT-L/14 shape, quick_gelu
    vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
    num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=8, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
TINY_OPENCLIP_H = dict(TINY_CLIP_L, hidden_act="gelu", pad_token_id=0)  # SD2.x
# SDXL text_encoder_2: wider than the first, as bigG (1280) is than CLIP-L (768):
# diffusers' from_single_file tells the two towers apart by their width.
TINY_OPENCLIP_BIGG = dict(TINY_OPENCLIP_H, hidden_size=12, intermediate_size=24, projection_dim=8)

TINY_UNET_SD1 = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[16, 32], norm_num_groups=8,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=8, attention_head_dim=2,
)
TINY_UNET_SD2 = dict(
    TINY_UNET_SD1, layers_per_block=1, attention_head_dim=[2, 4],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    use_linear_projection=True, upcast_attention=True,
)
TINY_UNET_SDXL = dict(
    TINY_UNET_SD1, layers_per_block=1, attention_head_dim=[2, 2, 4],
    block_out_channels=[16, 32, 32],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 1, 2], use_linear_projection=True,
    cross_attention_dim=8 + 12, addition_embed_type="text_time", addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=6 * 4 + 8,
)
TINY_UNET_INPAINT = dict(TINY_UNET_SD1, in_channels=9)

TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=[16, 32], norm_num_groups=8, sample_size=32,
    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
)
TINY_VAE_SDXL = dict(TINY_VAE, scaling_factor=0.13025, force_upcast=True)

# Scheduler configs as the real repos ship them. SD1.5's is from the diffusers
# 0.6 era: no timestep_spacing, no prediction_type (absent means the default).
SCHEDULER_SD15 = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}
SCHEDULER_SD21 = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SCHEDULER_SDXL = {
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}


def tokenizer_folder(out: Path, bpe: Path, pad_token: str, layout: str = "legacy") -> None:
    """A tokenizer folder in one of the layouts real repos have:
    "legacy": vocab.json, merges.txt and two JSON configs (the SD1.5/SD2.1/SDXL repos);
    "json": tokenizer.json + tokenizer_config.json only, as transformers 5's
        save_pretrained writes it (models saved by current tools);
    "both": the legacy files plus tokenizer.json (transformers 4 saves)."""
    if layout == "json":
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_folder(Path(tmp) / "legacy", bpe, pad_token)
            CLIPTokenizer.from_pretrained(Path(tmp) / "legacy").save_pretrained(out)
        return
    if layout == "both":
        tokenizer_folder(out, bpe, pad_token, "json")
        tokenizer_folder(out, bpe, pad_token, "legacy")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(bpe / name, out / name)
    special = {
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": pad_token, "unk_token": "<|endoftext|>",
    }
    config = dict(
        special, tokenizer_class="CLIPTokenizer", model_max_length=77,
        do_lower_case=True, errors="replace", add_prefix_space=False,
    )
    write_json(out / "special_tokens_map.json", special)
    write_json(out / "tokenizer_config.json", config)


ADDED_TOKENS = ["<cat-toy>", "<Style Word>"]


def added_tokens_folder(out: Path, bpe: Path) -> None:
    """A tokenizer.json-only folder with added tokens, as textual inversion
    (or `tokenizer.add_tokens`) leaves it: ids 49408 and up, matched whole."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_folder(Path(tmp) / "legacy", bpe, "<|endoftext|>")
        tokenizer = CLIPTokenizer.from_pretrained(Path(tmp) / "legacy")
        tokenizer.add_tokens(ADDED_TOKENS)
        tokenizer.save_pretrained(out)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def seeded(seed: int, build):
    torch.manual_seed(seed)
    model = build()
    return model.eval()


def text_encoder(config: dict, projection: bool = False, seed: int = 1):
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return seeded(seed, lambda: cls(CLIPTextConfig(**config)))


def randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Freshly built GroupNorm/LayerNorm are exactly 1 and 0, which would hide a
    swapped weight and bias; give them random values too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.weight is not None:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def unet(config: dict, seed: int = 2):
    model = seeded(seed, lambda: UNet2DConditionModel(**config))
    randomize_norms(model, seed)
    # diffusers zero-initialises conv_out-like layers in some blocks; none here,
    # but proj_out of transformer blocks is random already.
    return model


def vae(config: dict, seed: int = 3):
    model = seeded(seed, lambda: AutoencoderKL(**config))
    randomize_norms(model, seed)
    return model


def save_component(model, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def write_model_index(folder: Path, pipeline: str, components: dict[str, list]) -> None:
    index = {"_class_name": pipeline, "_diffusers_version": "0.42.1"}
    index.update(components)
    if pipeline.startswith("StableDiffusion") and "XL" not in pipeline:
        index.update(feature_extractor=[None, None], safety_checker=[None, None], requires_safety_checker=False)
    write_json(folder / "model_index.json", index)


def sd_folder(root: Path, bpe: Path, *, pipeline, te_config, unet_config, vae_config, scheduler, pad,
              tokenizer_layout="legacy"):
    root.mkdir(parents=True)
    tokenizer_folder(root / "tokenizer", bpe, pad, tokenizer_layout)
    save_component(text_encoder(te_config), root / "text_encoder")
    save_component(unet(unet_config), root / "unet")
    save_component(vae(vae_config), root / "vae")
    (root / "scheduler").mkdir()
    write_json(root / "scheduler" / "scheduler_config.json", scheduler)
    write_model_index(root, pipeline, {
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })


def write_tiny_models(fixtures: Path, bpe: Path) -> None:
    added_tokens_folder(fixtures / "tokenizer-added", bpe)
    sd_folder(fixtures / "tiny-sd1", bpe, pipeline="StableDiffusionPipeline", te_config=TINY_CLIP_L,
              unet_config=TINY_UNET_SD1, vae_config=TINY_VAE, scheduler=SCHEDULER_SD15, pad="<|endoftext|>")
    sd_folder(fixtures / "tiny-sd2", bpe, pipeline="StableDiffusionPipeline", te_config=TINY_OPENCLIP_H,
              unet_config=TINY_UNET_SD2, vae_config=TINY_VAE, scheduler=SCHEDULER_SD21, pad="!",
              tokenizer_layout="json")
    sd_folder(fixtures / "tiny-sd1-inpaint", bpe, pipeline="StableDiffusionInpaintPipeline",
              te_config=TINY_CLIP_L, unet_config=TINY_UNET_INPAINT, vae_config=TINY_VAE,
              scheduler=SCHEDULER_SD15, pad="<|endoftext|>", tokenizer_layout="both")

    root = fixtures / "tiny-sdxl"
    root.mkdir(parents=True)
    tokenizer_folder(root / "tokenizer", bpe, "<|endoftext|>", "json")
    tokenizer_folder(root / "tokenizer_2", bpe, "!", "json")
    save_component(text_encoder(TINY_CLIP_L), root / "text_encoder")
    save_component(text_encoder(TINY_OPENCLIP_BIGG, projection=True, seed=4), root / "text_encoder_2")
    save_component(unet(TINY_UNET_SDXL), root / "unet")
    save_component(vae(TINY_VAE_SDXL), root / "vae")
    (root / "scheduler").mkdir()
    write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER_SDXL)
    write_model_index(root, "StableDiffusionXLPipeline", {
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })


# ---------------------------------------------------------------------------
# Full-size manifests: the real configs, built on the meta device.
# ---------------------------------------------------------------------------

CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H = dict(CLIP_L, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                  num_attention_heads=16, hidden_act="gelu", projection_dim=512)
OPENCLIP_BIGG = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, hidden_act="gelu", projection_dim=1280)

UNET_SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)
UNET_SD21 = dict(UNET_SD15, sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                 use_linear_projection=True, upcast_attention=True)
UNET_SDXL = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280], cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
VAE_SD = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=[128, 256, 512, 512], norm_num_groups=32, sample_size=512,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
)

# SD3.5's transformers (their config.json files; Large Turbo has Large's).
MMDIT_SD35_LARGE = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
    num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
    out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm",
)
MMDIT_SD35_MEDIUM = dict(
    MMDIT_SD35_LARGE, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
)

# SD3's text_encoder_3: google/t5-v1_1-xxl's encoder.
T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
    layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    tie_word_embeddings=False,
)

# SD3 / SD3.5 (Medium and Large share it): 16 latent channels, a shift, no quant convs.
VAE_SD35 = dict(
    VAE_SD, latent_channels=16, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
    shift_factor=0.0609, scaling_factor=1.5305, force_upcast=True,
)

# transformers 4 (which saved the real SD repos) kept this buffer in the files.
POSITION_IDS = {"text_model.embeddings.position_ids": [1, 77]}


def manifest_of(model, prefix: str = "", optional: dict | None = None) -> dict:
    tensors = {prefix + k: list(v.shape) for k, v in model.state_dict().items()}
    return {"tensors": dict(sorted(tensors.items())), "optional": optional or {}}


def write_manifests(out: Path) -> None:
    def config_json(model) -> dict:
        """The config.json the real folder carries for this model."""
        text = model.to_json_string() if hasattr(model, "to_json_string") else model.config.to_json_string()
        config = json.loads(text)
        if not hasattr(model, "to_json_string"):  # transformers writes this on save
            config["architectures"] = [type(model).__name__]
        for volatile in ("_diffusers_version", "transformers_version", "_name_or_path"):
            config.pop(volatile, None)
        return config

    def manifest(model, prefix: str = "", optional: dict | None = None) -> dict:
        return dict(manifest_of(model, prefix, optional), config=config_json(model))

    def t5_manifest() -> dict:
        """SD3's text_encoder_3 (T5 v1.1 XXL). Its files hold `shared.weight`;
        `encoder.embed_tokens.weight` is the same tensor (tied), in the files
        of some savers only."""
        from transformers import T5Config, T5EncoderModel
        model = T5EncoderModel(T5Config(**T5_XXL))
        out = manifest(model)
        out["optional"] = {"encoder.embed_tokens.weight": out["tensors"].pop("encoder.embed_tokens.weight")}
        return out

    def controlnet(unet: dict) -> ControlNetModel:
        """The ControlNet releases of a family: the UNet's encoder config."""
        accepted = inspect.signature(ControlNetModel.__init__).parameters
        return ControlNetModel(**{k: v for k, v in unet.items() if k in accepted})

    with torch.device("meta"):
        def clip(config, projection=False):
            model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**config))
            # Real files are keyed text_model.*: CLIPTextModel of transformers 5
            # drops that prefix in its state dict, the projection model keeps it.
            has_prefix = any(k.startswith("text_model.") for k in model.state_dict())
            return manifest(model, "" if has_prefix else "text_model.", POSITION_IDS)

        sets = {
            "sd15": {
                "text_encoder": clip(CLIP_L),
                "unet": manifest(UNet2DConditionModel(**UNET_SD15)),
                "vae": manifest(AutoencoderKL(**VAE_SD)),
                "controlnet": manifest(controlnet(UNET_SD15)),
                "taesd": manifest(AutoencoderTiny()),
            },
            "sd21": {
                "text_encoder": clip(OPENCLIP_H),
                "unet": manifest(UNet2DConditionModel(**UNET_SD21)),
                "vae": manifest(AutoencoderKL(**dict(VAE_SD, sample_size=768))),
            },
            "sdxl": {
                "text_encoder": clip(CLIP_L),
                "text_encoder_2": clip(OPENCLIP_BIGG, projection=True),
                "unet": manifest(UNet2DConditionModel(**UNET_SDXL)),
                "vae": manifest(AutoencoderKL(**dict(VAE_SD, sample_size=1024, scaling_factor=0.13025,
                                                      force_upcast=True))),
                "controlnet": manifest(controlnet(UNET_SDXL)),
                "taesd": manifest(AutoencoderTiny()),
            },
            "sd35": {
                "vae": manifest(AutoencoderKL(**VAE_SD35)),
                "text_encoder_3": t5_manifest(),
                "transformer_medium": manifest(SD3Transformer2DModel(**MMDIT_SD35_MEDIUM)),
                "transformer_large": manifest(SD3Transformer2DModel(**MMDIT_SD35_LARGE)),
            },
        }
    for model, components in sets.items():
        (out / model).mkdir(parents=True, exist_ok=True)
        for component, value in components.items():
            write_json(out / model / f"{component}.json", value)
