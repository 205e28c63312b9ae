"""Side by side: the same SD1.5-architecture, random-weight workload through
diffusers and through sd-rs, per component, in one run.

    .venv/bin/python benches/side_by_side.py                       # CPU: 256x256, 4 steps, f32 and bf16
    .venv/bin/python benches/side_by_side.py --channels-last       # the same, both libraries channels-last
    .venv/bin/python benches/side_by_side.py --dtype f32 --steps 3 --sampler euler --runs 1   # the memory comparison

Each library runs in a process of its own; the table ends with both
processes' peak resident memory (ru_maxrss).
    .venv/bin/python benches/side_by_side.py --device cuda --size 512 --steps 50 --dtype f16 --batch 1 4
    ... --compile          # a third column: diffusers with `pipe.unet = torch.compile(pipe.unet)`

Needs `bash scripts/setup.sh --reference` and a release build of
`pipeline_timing` (`cargo build --release -p sd-benches --bin pipeline_timing`).
The random model (SD1.5 configs from reference/manifests, seeded weights) is
written once to ~/.cache/sd-rs/sd15-random (about 4 GB). Random weights draw
noise: this times the work, not the pictures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path(os.environ.get("SD_RS_CACHE", Path.home() / ".cache" / "sd-rs")) / "sd15-random"


def make_model() -> None:
    if (MODEL / "model_index.json").exists():
        return
    sys.path.insert(0, str(ROOT / "reference"))
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import harness_models

    manifests = ROOT / "reference" / "manifests" / "sd15"
    config = lambda c: json.loads((manifests / f"{c}.json").read_text())["config"]  # noqa: E731
    torch.manual_seed(0)
    unet_config = {k: v for k, v in config("unet").items() if not k.startswith("_")}
    vae_config = {k: v for k, v in config("vae").items() if not k.startswith("_")}
    te_config = {k: v for k, v in config("text_encoder").items() if k != "architectures"}
    UNet2DConditionModel(**unet_config).save_pretrained(MODEL / "unet")
    AutoencoderKL(**vae_config).save_pretrained(MODEL / "vae")
    CLIPTextModel(CLIPTextConfig(**te_config)).save_pretrained(MODEL / "text_encoder")
    harness_models.tokenizer_folder(MODEL / "tokenizer", ROOT / "reference" / "fixtures" / "tokenizer", "<|endoftext|>")
    (MODEL / "scheduler").mkdir(parents=True, exist_ok=True)
    harness_models.write_json(MODEL / "scheduler" / "scheduler_config.json", harness_models.SCHEDULER_SD15)
    harness_models.write_model_index(MODEL, "StableDiffusionPipeline", {
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


SCHEDULERS = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
              "dpm++2m": "DPMSolverMultistepScheduler"}


def diffusers_timing(device: str, dtype: torch.dtype, size: int, steps: int, batch: int, runs: int,
                     sampler: str, channels_last: bool, compile_unet: bool = False) -> dict:
    import diffusers
    from diffusers import StableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=dtype, safety_checker=None).to(device)
    scheduler_class = getattr(diffusers, SCHEDULERS[sampler])
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    if channels_last:  # diffusers' documented memory-format optimisation
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_unet:  # the one line diffusers documents; the first run pays the compile
        pipe.unet = torch.compile(pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    results = []
    prompt = "a photo of an astronaut riding a horse on the moon"
    for run in range(runs):
        t0 = time.perf_counter()
        embeds, negative = pipe.encode_prompt(prompt, device, batch, True, "")
        sync(device)
        text = time.perf_counter() - t0
        marks = []

        def on_step(p, i, t, kw):
            if i == len(p.scheduler.timesteps) - 1:  # only the last step waits for the device
                sync(device)
            marks.append(time.perf_counter())
            return kw

        t1 = time.perf_counter()
        pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=size, width=size,
             num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(run),
             callback_on_step_end=on_step, output_type="pil")
        sync(device)
        total = time.perf_counter() - t1
        denoise = marks[-1] - t1
        results.append({"text_encode_s": text, "denoise_s": denoise, "unet_step_s": denoise / len(marks),
                        "vae_decode_s": total - denoise, "end_to_end_s": total + text})
    out = {"library": "diffusers" + (" + torch.compile" if compile_unet else ""), "load_s": load, "runs": results}
    if device.startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def child(cmd: list[str]) -> dict:
    """Runs one library in a process of its own: its JSON result (last line of
    stdout) with the process's peak resident memory added (`peak_rss_gib`,
    the whole process: libtorch, weights, activations)."""
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed with {proc.returncode}")
        stdout.seek(0)
        result = json.loads(stdout.read().strip().splitlines()[-1])
    result["peak_rss_gib"] = usage.ru_maxrss * 1024 / 2**30  # ru_maxrss is in KiB on Linux
    return result


def rust_timing(device: str, dtype: str, size: int, steps: int, batch: int, runs: int, sampler: str,
                channels_last: bool, compiled: bool = False) -> dict:
    binary = Path(os.environ.get("SD_PIPELINE_TIMING", ROOT / "target" / "release" / "pipeline_timing"))
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "sd-benches", "--bin", "pipeline_timing"], check=True, cwd=ROOT)
    return child([str(binary), "--model", str(MODEL), "--device", device, "--dtype", dtype, "--size", str(size),
                  "--steps", str(steps), "--batch", str(batch), "--runs", str(runs), "--sampler", sampler]
                 + (["--channels-last"] if channels_last else []) + (["--compiled"] if compiled else []))


def diffusers_child(device: str, dtype: str, size: int, steps: int, batch: int, runs: int, sampler: str,
                    channels_last: bool, compile_unet: bool = False) -> dict:
    """diffusers_timing in a process of its own (see `child`)."""
    return child([sys.executable, __file__, "--worker", "--device", device, "--dtype", dtype, "--size", str(size),
                  "--steps", str(steps), "--batch", str(batch), "--runs", str(runs), "--sampler", sampler]
                 + (["--channels-last"] if channels_last else []) + (["--compile"] if compile_unet else []))


def best(result: dict, key: str) -> float:
    return min(r[key] for r in result["runs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", nargs="+", default=["f32", "bf16"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--sampler", default="pndm", choices=sorted(SCHEDULERS))
    parser.add_argument("--channels-last", action="store_true", help="both libraries: UNet and VAE channels-last")
    parser.add_argument("--compile", action="store_true", help="also time diffusers with its UNet torch.compile'd")
    parser.add_argument("--ours-compiled", action="store_true", help="sd-rs through its AOTInductor package")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # diffusers' own process
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    if args.worker:
        print(json.dumps(diffusers_timing(args.device, dtypes[args.dtype[0]], args.size, args.steps, args.batch[0],
                                          args.runs, args.sampler, args.channels_last, args.compile)))
        return
    make_model()
    keys = ["text_encode_s", "unet_step_s", "vae_decode_s", "end_to_end_s"]
    print(f"SD1.5 architecture, random weights, {args.size}x{args.size}, {args.steps} {args.sampler} steps, CFG, "
          f"device {args.device}{', channels-last' if args.channels_last else ''}; unet_step = loop time / UNet calls")
    for dtype in args.dtype:
        for batch in args.batch:
            ours = rust_timing(args.device, dtype, args.size, args.steps, batch, args.runs, args.sampler,
                               args.channels_last, args.ours_compiled)
            theirs = diffusers_child(args.device, dtype, args.size, args.steps, batch, args.runs, args.sampler,
                                     args.channels_last)
            compiled = diffusers_child(args.device, dtype, args.size, args.steps, batch, args.runs, args.sampler,
                                       args.channels_last, True) if args.compile else None
            print(f"\n{dtype}, batch {batch} (best of {args.runs} runs, seconds)")
            print(f"{'component':<16}{'diffusers':>12}{'sd-rs':>12}{'speed-up':>10}"
                  + (f"{'compiled':>12}{'vs compiled':>13}" if compiled else ""))
            for key in keys:
                d, r = best(theirs, key), best(ours, key)
                extra = f"{best(compiled, key):>12.4f}{best(compiled, key) / r:>12.2f}x" if compiled else ""
                print(f"{key[:-2]:<16}{d:>12.4f}{r:>12.4f}{d / r:>9.2f}x{extra}")
            if ours.get("compile"):
                print(f"sd-rs compile: {ours['compile']['compile_s']:.0f} s, package "
                      f"{ours['compile']['package_mib']:.0f} MiB; UNet ran: {ours['runs'][-1]['unet_execution']}")
            print(f"peak RSS (whole process): diffusers {theirs['peak_rss_gib']:.2f} GiB, "
                  f"sd-rs {ours['peak_rss_gib']:.2f} GiB")
            if "peak_memory_gib" in theirs:
                print(f"peak GPU memory: diffusers {theirs['peak_memory_gib']:.2f} GiB, "
                      f"sd-rs {ours.get('peak_memory_gib', float('nan')):.2f} GiB")


if __name__ == "__main__":
    main()
