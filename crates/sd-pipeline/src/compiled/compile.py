"""Compiles a pipeline's parts into AOTInductor packages for sd (sd_pipeline::compiled).

    python compile.py JOB.json

JOB: {"parts": [SPEC, ...]}, each SPEC: part (unet or vae-decoder), config (the part's
config.json), weights (a safetensors file of the weights the pipeline holds, LoRAs merged
included: their names and shapes must be diffusers' exactly), dtype (f32/f16/bf16), device
(cpu/cuda:N), batch (the UNet's CFG-doubled batch; the decoder's images), height/width
(latents), for the UNet tokens (context length) and text_embeds/time_ids widths (SDXL; 0
otherwise), package (out path), metadata (written into the package). diffusers' own module
is exported with torch.export and compiled by Inductor with freezing (the weights folded in
as constants, as `torch.compile`'s freezing does: on the CPU it lays them out for oneDNN
once, which is where the speed comes from). A line {"package": ...} is printed as each
package is whole.
"""

import json
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file


class Call(torch.nn.Module):
    """The UNet as the pipeline calls it: latents, timestep, context (and SDXL's added
    conditions), the prediction out."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, context, text_embeds=None, time_ids=None):
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, context, added_cond_kwargs=added, return_dict=False)[0]


class Decode(torch.nn.Module):
    """The VAE's decoder as the pipeline calls it on a slice: unscaled latents in, images out
    (`post_quant_conv`, then the decoder: AutoencoderKL._decode without its tiling)."""

    def __init__(self, vae):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def with_weights(cls, spec, dtype):
    """diffusers' module for the config, holding exactly the given weights."""
    config = {k: v for k, v in spec["config"].items() if not k.startswith("_")}
    # (built on the meta device: no random draw, no f32 copy of an SDXL UNet before the cast)
    with torch.device("meta"):
        module = cls.from_config(config).to(dtype).eval()
    weights = load_file(spec["weights"])
    ours = {name: list(t.shape) for name, t in weights.items()}
    theirs = {name: list(t.shape) for name, t in module.state_dict().items()}
    if ours != theirs:
        missing = sorted(set(theirs) - set(ours))[:3]
        unexpected = sorted(set(ours) - set(theirs))[:3]
        misshapen = sorted(n for n in set(ours) & set(theirs) if ours[n] != theirs[n])[:3]
        sys.exit(f"{spec['part']}: the weights do not fit diffusers' module for this config: "
                 f"missing {missing}, unexpected {unexpected}, misshapen {misshapen}")
    module.load_state_dict(weights, strict=True, assign=True)
    return module, config


def unet_call(spec, dtype, device):
    unet, config = with_weights(UNet2DConditionModel, spec, dtype)
    b, h, w = spec["batch"], spec["height"], spec["width"]
    inputs = [torch.randn(b, config["in_channels"], h, w, dtype=dtype, device=device),
              torch.tensor(500.0, device=device),
              torch.randn(b, spec["tokens"], config["cross_attention_dim"], dtype=dtype, device=device)]
    if spec["text_embeds"]:
        inputs += [torch.randn(b, spec["text_embeds"], dtype=dtype, device=device),
                   torch.randn(b, spec["time_ids"], dtype=dtype, device=device)]
    return Call(unet), inputs


def decoder_call(spec, dtype, device):
    vae, config = with_weights(AutoencoderKL, spec, dtype)
    latents = torch.randn(spec["batch"], config.get("latent_channels", 4), spec["height"], spec["width"],
                          dtype=dtype, device=device)
    return Decode(vae), [latents]


def compile_part(spec) -> None:
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[spec["dtype"]]
    device = torch.device(spec["device"])
    build = {"unet": unet_call, "vae-decoder": decoder_call}[spec["part"]]
    call, inputs = build(spec, dtype, device)
    call = call.to(device).eval()
    started = time.time()
    with torch.no_grad():
        program = torch.export.export(call, tuple(inputs))
        metadata = dict(spec["metadata"], **{"sd.torch": torch.__version__,
                                             "sd.cpu_capability": torch.backends.cpu.get_cpu_capability()})
        torch._inductor.aoti_compile_and_package(
            program, package_path=spec["package"],
            inductor_configs={"aot_inductor.metadata": metadata, "freezing": True})
    print(json.dumps({"seconds": time.time() - started, "package": spec["package"]}), flush=True)


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    for spec in job["parts"]:
        compile_part(spec)


if __name__ == "__main__":  # (benches/compiled_step.py imports Call and Decode)
    main()
