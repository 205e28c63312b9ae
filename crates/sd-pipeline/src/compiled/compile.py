"""Compiles a UNet's call into an AOTInductor package for sd (sd_pipeline::compiled).

    python compile_unet.py SPEC.json

SPEC: unet_config (the UNet's config.json), weights (a safetensors file of the weights the
pipeline holds, LoRAs merged included: their names and shapes must be diffusers' exactly),
dtype (f32/f16/bf16), device (cpu/cuda:N), batch (the UNet batch, CFG doubled), height/width (latents), tokens
(context length), text_embeds/time_ids widths (SDXL; 0 otherwise), package (out path),
metadata (written into the package). diffusers' own UNet2DConditionModel is exported with
torch.export and compiled by Inductor with freezing (the weights folded in as constants, as
`torch.compile`'s freezing does: on the CPU it lays them out for oneDNN once, which is where
the speed comes from).
"""

import json
import sys
import time

import torch
from diffusers import UNet2DConditionModel
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


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[spec["dtype"]]
    device = torch.device(spec["device"])
    config = {k: v for k, v in spec["unet_config"].items() if not k.startswith("_")}
    # (built on the meta device: no random draw, no f32 copy of an SDXL UNet before the cast)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).to(dtype).eval()
    weights = load_file(spec["weights"])
    ours = {name: list(t.shape) for name, t in weights.items()}
    theirs = {name: list(t.shape) for name, t in unet.state_dict().items()}
    if ours != theirs:
        missing = sorted(set(theirs) - set(ours))[:3]
        unexpected = sorted(set(ours) - set(theirs))[:3]
        misshapen = sorted(n for n in set(ours) & set(theirs) if ours[n] != theirs[n])[:3]
        sys.exit(f"the weights do not fit diffusers' UNet for this config: missing {missing}, "
                 f"unexpected {unexpected}, misshapen {misshapen}")
    unet.load_state_dict(weights, strict=True, assign=True)
    unet.to(device)

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


if __name__ == "__main__":  # (benches/compiled_step.py imports Call)
    main()
