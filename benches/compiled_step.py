"""One UNet step, side by side in one process (issue 32): diffusers eager,
diffusers + `torch.compile` (Inductor, freezing on), and AOTInductor packages
of the same exported call, built two ways: frozen (the weights folded into the
package as constants, what `sd compile` makes by default) and unfrozen with the
weights given at load (`load_constants(user_managed=True)`: the package holds
code only and runs on tensors the caller already holds, no second copy).

    .venv/bin/python benches/compiled_step.py --model /tmp/sd-cache/sd15-random --dtype bf16 --size 256
    ... --part vae-decoder --size 512    # the VAE decoder instead (one image)
    ... --device cuda --dtype f16          # on a GPU (timed with a device sync)

Medians of --runs calls after one warm-up call each (the compile is timed apart).
CFG batch 2, random weights (noise: this times the work).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

# (the call the pipeline makes, as sd compile exports it)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "crates/sd-pipeline/src/compiled"))
from compile import Call, Decode  # noqa: E402


def median_time(fn, runs: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a diffusers folder with unet/")
    parser.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "f16"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["torch.compile", "frozen", "unfrozen"])
    parser.add_argument("--part", default="unet", choices=["unet", "vae-decoder"],
                        help="vae-decoder: one image's decode instead (is a decoder package worth building?)")
    args = parser.parse_args()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    if args.part == "vae-decoder":
        call, inputs = vae_decoder(args.model, dtype, args.size)
    else:
        call, inputs = unet_call(args.model, dtype, args.size)
    call, inputs = call.to(args.device), [x.to(args.device) for x in inputs]
    rows = time_all(call, inputs, args)
    eager = rows[0][1]
    what = "UNet step, batch 2" if args.part == "unet" else "VAE decode, one image"
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"{args.model}, {args.dtype}, {args.size}x{args.size}, {what}, median of {args.runs}, {where}")
    print(f"| {what} | s | vs diffusers eager | compile s | package MiB |\n| --- | --: | --: | --: | --: |")
    for name, seconds, built, mib in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / eager:.2f}x | {built:.0f} | {mib:.0f} |")


def vae_decoder(model: str, dtype: torch.dtype, size: int):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model + "/vae", torch_dtype=dtype).eval()
    torch.manual_seed(0)
    return Decode(vae).eval(), [torch.randn(1, vae.config.latent_channels, size // 8, size // 8, dtype=dtype)]


def unet_call(model: str, dtype: torch.dtype, size: int):
    unet = UNet2DConditionModel.from_pretrained(model + "/unet", torch_dtype=dtype).eval()
    config = unet.config
    torch.manual_seed(0)
    latent = size // 8
    inputs = [torch.randn(2, config.in_channels, latent, latent, dtype=dtype), torch.tensor(500.0),
              torch.randn(2, 77, config.cross_attention_dim, dtype=dtype)]
    if config.addition_embed_type:
        inputs += [torch.randn(2, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim,
                               dtype=dtype), torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=dtype)]
    return Call(unet).eval(), inputs


def time_all(call, inputs, args) -> list:
    """diffusers eager, torch.compile, and the two packages, each timed on the same inputs."""
    rows = []

    def add(row):  # (printed as it comes: a later part that crashes leaves the earlier figures)
        rows.append(row)
        print(f"{row[0]}: {row[1]:.4f} s (built in {row[2]:.0f} s)", flush=True)

    with torch.no_grad():
        reference = call(*inputs)
        add(("diffusers eager", median_time(lambda: call(*inputs), args.runs), 0.0, 0.0))
        if "torch.compile" not in args.skip:
            torch._inductor.config.freezing = True
            compiled = torch.compile(call)
            t0 = time.perf_counter()
            compiled(*inputs)
            add(("diffusers + torch.compile (freezing)", median_time(lambda: compiled(*inputs), args.runs),
                         time.perf_counter() - t0, 0.0))
            torch._inductor.config.freezing = False
            torch._dynamo.reset()
        program = torch.export.export(call, tuple(inputs))
        folder = tempfile.mkdtemp()
        for name, configs in [("frozen", {"freezing": True}),
                              ("unfrozen", {"aot_inductor.package_constants_in_so": False})]:
            if name in args.skip:
                continue
            path = os.path.join(folder, name + ".pt2")
            t0 = time.perf_counter()
            torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs=configs)
            built = time.perf_counter() - t0
            package = torch._inductor.aoti_load_package(path)
            if name == "unfrozen":
                weights = call.state_dict()
                package.load_constants({k: weights[k] for k in package.get_constant_fqns()},
                                       check_full_update=True, user_managed=True)
            error = (package(*inputs) - reference).abs().max().item()
            # (against the error model's reordered-computation bound, which scales with this)
            scale = reference.abs().max().item()
            add((f"AOTInductor package, {name} (max-abs vs eager {error:.2g}, eager's max-abs {scale:.3g})",
                         median_time(lambda: package(*inputs), args.runs), built, os.path.getsize(path) / 2**20))
    return rows


if __name__ == "__main__":
    main()
