"""Compiles a UNet into an AOTInductor package for sd (sd_pipeline::compiled).

    python compile_unet.py SPEC.json

SPEC: unet_config (the folder's config.json), weights (a safetensors file of the weights
the pipeline holds, diffusers names: LoRAs merged included), dtype (f32/f16/bf16), device
(cpu/cuda:N), batch (the UNet batch, CFG doubled), height/width (latents), tokens
(context length), text_embeds/time_ids widths (SDXL; 0 otherwise), package (out path),
metadata (written into the package). diffusers' own UNet2DConditionModel is exported with
torch.export and compiled by Inductor with freezing, as `torch.compile` would.
"""

import json
import sys
import time

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

spec = json.loads(open(sys.argv[1]).read())
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[spec["dtype"]]
device = torch.device(spec["device"])
config = {k: v for k, v in spec["unet_config"].items() if not k.startswith("_")}
unet = UNet2DConditionModel.from_config(config).to(dtype).eval()
missing, unexpected = unet.load_state_dict(load_file(spec["weights"]), strict=False)
if missing or unexpected:
    sys.exit(f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
unet.to(device)


class Call(torch.nn.Module):
    """The UNet as the pipeline calls it: latents, timestep, context (and SDXL's added
    conditions), the prediction out."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, context, text_embeds=None, time_ids=None):
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, context, added_cond_kwargs=added, return_dict=False)[0]


b, h, w = spec["batch"], spec["height"], spec["width"]
inputs = [torch.randn(b, config["in_channels"], h, w, dtype=dtype, device=device),
          torch.tensor(500.0, device=device),
          torch.randn(b, spec["tokens"], config["cross_attention_dim"], dtype=dtype, device=device)]
if spec["text_embeds"]:
    inputs += [torch.randn(b, spec["text_embeds"], dtype=dtype, device=device),
               torch.randn(b, spec["time_ids"], dtype=dtype, device=device)]
started = time.time()
with torch.no_grad():
    program = torch.export.export(Call(unet).eval(), tuple(inputs))
    metadata = dict(spec["metadata"], **{"sd.torch": torch.__version__,
                                         "sd.cpu_capability": torch.backends.cpu.get_cpu_capability()})
    torch._inductor.aoti_compile_and_package(
        program, package_path=spec["package"],
        inductor_configs={"aot_inductor.metadata": metadata, "freezing": True})
print(json.dumps({"seconds": time.time() - started, "package": spec["package"]}))
