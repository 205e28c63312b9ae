"""IP-Adapter's CPU cost, side by side with diffusers: the image prompt's encoding (the
ViT-H image encoder and the adapter's projection) and the per-step overhead of the
decoupled cross-attention, on the full-size SD1.5 architecture with random weights, for
the plain (`ip-adapter_sd15`) and Plus (`ip-adapter-plus_sd15`) layouts.

    .venv/bin/python benches/ip_adapter.py [--size 256] [--steps 4] [--runs 2]

Each configuration runs in a process of its own (benches/side_by_side.py's `child`): sd
through `pipeline_timing` (release build), diffusers through `load_ip_adapter`. The
random files (a 2.5 GB ViT-H encoder, the adapters in their released names and shapes,
reference/manifests/ip-adapter) are written once under ~/.cache/sd-rs/ip-adapter; the
SD1.5 folder is side_by_side.py's. Random weights draw noise: this times the work.
diffusers projects the image embeddings inside every UNet call; sd does it once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import MODEL, ROOT, child, make_model  # noqa: E402

CACHE = MODEL.parent / "ip-adapter"
IMAGE = ROOT / "reference" / "fixtures" / "images" / "init-72x64.png"
PROMPT = "a photo of an astronaut riding a horse on the moon"


def make_files() -> None:
    """The random encoder folder and adapter files, from the manifests."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    manifests = ROOT / "reference" / "manifests" / "ip-adapter"
    encoder = CACHE / "image_encoder"
    if not (encoder / "config.json").exists():
        torch.manual_seed(0)
        config = json.loads((manifests / "image_encoder_vit-h.json").read_text())["config"]
        CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).save_pretrained(encoder)
    for name in ("ip-adapter_sd15", "ip-adapter-plus_sd15"):
        path = CACHE / f"{name}.safetensors"
        if path.exists():
            continue
        gen = torch.Generator().manual_seed(1)
        shapes = json.loads((manifests / f"{name}.json").read_text())["tensors"]
        tensors = {k: torch.randn(v, generator=gen) * 0.02 for k, v in shapes.items()}
        tensors.update({k: torch.ones(v) for k, v in shapes.items() if "norm" in k and k.endswith("weight")})
        save_file(tensors, path)


def diffusers_worker(adapter: str, size: int, steps: int, runs: int) -> dict:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    extra, image = {}, Image.open(IMAGE).convert("RGB")
    if adapter:
        pipe.load_ip_adapter(str(CACHE), subfolder="", weight_name=f"{adapter}.safetensors",
                             image_encoder_folder="image_encoder")
    results = []
    for run in range(runs):
        t0 = time.perf_counter()
        if adapter:
            embeds = pipe.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
            extra = {"ip_adapter_image_embeds": embeds}
        image_prompt = time.perf_counter() - t0
        marks = []
        t1 = time.perf_counter()
        pipe(PROMPT, height=size, width=size, num_inference_steps=steps, output_type="latent",
             generator=torch.Generator().manual_seed(run),
             callback_on_step_end=lambda p, i, t, kw: marks.append(time.perf_counter()) or kw, **extra)
        # steps after the first: the first also holds the text encoding
        step = (marks[-1] - marks[0]) / (len(marks) - 1)
        results.append({"image_prompt_s": image_prompt, "step_after_first_s": step,
                        "end_to_end_s": time.perf_counter() - t0})
    return {"runs": results}


def sd_child(adapter: str, size: int, steps: int, runs: int) -> dict:
    binary = ROOT / "target" / "release" / "pipeline_timing"
    args = [str(binary), "--model", str(MODEL), "--size", str(size), "--steps", str(steps), "--runs", str(runs),
            "--sampler", "euler"]
    if adapter:
        args += ["--ip-adapter", str(CACHE / f"{adapter}.safetensors"), "--image-encoder",
                 str(CACHE / "image_encoder"), "--ip-image", str(IMAGE)]
    return child(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.worker is not None:
        print(json.dumps(diffusers_worker(args.worker, args.size, args.steps, args.runs)))
        return
    make_model()
    make_files()
    best = lambda r, k: min(run[k] for run in r["runs"])  # noqa: E731
    print(f"SD1.5 architecture, random weights, {args.size}x{args.size}, {args.steps} Euler steps, CFG, f32, "
          f"best of {args.runs}; image prompt = encoder + projection; step from the loop")
    print("| adapter | library | image prompt s | UNet step s | step overhead | peak RSS GiB |")
    print("| --- | --- | --: | --: | --: | --: |")
    for library, run in (("sd", sd_child), ("diffusers", lambda *a: child(
            [sys.executable, __file__, "--worker", a[0], "--size", str(a[1]), "--steps", str(a[2]),
             "--runs", str(a[3])]))):
        base = run("", args.size, args.steps, args.runs)
        for adapter in ("ip-adapter_sd15", "ip-adapter-plus_sd15"):
            out = run(adapter, args.size, args.steps, args.runs)
            overhead = best(out, "step_after_first_s") / best(base, "step_after_first_s") - 1
            print(f"| {adapter} | {library} | {best(out, 'image_prompt_s'):.3f} | {best(out, 'step_after_first_s'):.3f} "
                  f"| {overhead:+.1%} | {out['peak_rss_gib']:.2f} |")
        print(f"| (none) | {library} | - | {best(base, 'step_after_first_s'):.3f} | - | {base['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()
