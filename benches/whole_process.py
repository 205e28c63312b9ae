"""Side by side, whole process: the same random-weight model through diffusers
and through `sd txt2img`, each run its own process under `/usr/bin/time -v`:
wall, user and system time, peak resident memory, and when the model was
loaded and the first and last steps ended (both sides print the wall clock
at each; the script measures from its own spawn; "load" is diffusers'
`from_pretrained` alone, after its imports).

    .venv/bin/python benches/whole_process.py --model sd15 --dtype f32 --steps 3   # issue 28's run
    .venv/bin/python benches/whole_process.py --model sd15 --dtype bf16 --steps 3
    .venv/bin/python benches/whole_process.py --model sd35 --dtype bf16 --steps 4 --low-memory
    .venv/bin/python benches/whole_process.py --model sdxl --dtype bf16 --steps 2 --size 512 --only sd --gguf q8_0

--runs N alternates the two sides N times and reports medians. Needs
`bash scripts/setup.sh --reference` and `cargo build --release -p sd-cli`.
The models: SD1.5's architecture (benches/side_by_side.py writes it to
~/.cache/sd-rs/sd15-random, 4 GB f32) and SD3.5 Medium's with T5-XXL
(~/.cache/sd-rs/sd35-medium-random, 16 GB bf16; its tokenizers are stand-ins:
the project's CLIP vocabulary, the tiny test T5 vocabulary, so token ids
differ from the real model's, the work does not), SDXL base's
(~/.cache/sd-rs/sdxl-random, 7 GB bf16; --gguf runs its UNet from a GGUF
file `sd convert` makes beside it). Random weights draw noise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SD_RS_CACHE", Path.home() / ".cache" / "sd-rs"))
SD35 = CACHE / "sd35-medium-random"
SDXL = CACHE / "sdxl-random"
PROMPT = "a photo of a red fox in the snow, detailed"


def make_sd35() -> None:
    """Every component in bf16, drawn directly in bf16 (T5-XXL in f32 would
    not fit next to the rest in 24 GB)."""
    if (SD35 / "model_index.json").exists():
        return
    import shutil

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    sys.path.insert(0, str(ROOT / "reference"))
    import harness_models

    preset = json.loads((ROOT / "crates/sd-pipeline/src/presets/sd35.json").read_text())
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    transformer = json.loads((ROOT / "reference/manifests/sd35/transformer_medium.json").read_text())["config"]
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    for sub, build in [
        ("transformer", lambda: SD3Transformer2DModel(**strip(transformer))),
        ("vae", lambda: AutoencoderKL(**strip(preset["vae"]))),
        ("text_encoder", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**preset["text_encoder"]))),
        ("text_encoder_2", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**preset["text_encoder_2"]))),
        ("text_encoder_3", lambda: T5EncoderModel(T5Config(**preset["text_encoder_3"]))),
    ]:
        model = build()
        model.save_pretrained(SD35 / sub, max_shard_size="20GB")
        del model
    torch.set_default_dtype(torch.float32)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(SD35 / "scheduler")
    tokenizer = ROOT / "reference" / "fixtures" / "tokenizer"
    harness_models.tokenizer_folder(SD35 / "tokenizer", tokenizer, "<|endoftext|>", "json")
    harness_models.tokenizer_folder(SD35 / "tokenizer_2", tokenizer, "!", "json")
    shutil.copytree(ROOT / "reference/fixtures/sd3/tokenizer_3", SD35 / "tokenizer_3", dirs_exist_ok=True)
    index = json.loads((ROOT / "reference/fixtures/sd3/pipeline/model_index.json").read_text())
    (SD35 / "model_index.json").write_text(json.dumps(index, indent=1))


def make_sdxl() -> None:
    """SDXL base's architecture, every component drawn in bf16 (7 GB)."""
    if (SDXL / "model_index.json").exists():
        return
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sys.path.insert(0, str(ROOT / "reference"))
    import harness_models

    preset = json.loads((ROOT / "crates/sd-pipeline/src/presets/sdxl.json").read_text())
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    for sub, build in [
        ("unet", lambda: UNet2DConditionModel(**strip(preset["unet"]))),
        ("vae", lambda: AutoencoderKL(**strip(preset["vae"]))),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**preset["text_encoder"]))),
        ("text_encoder_2", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**preset["text_encoder_2"]))),
    ]:
        model = build()
        model.save_pretrained(SDXL / sub, max_shard_size="20GB")
        del model
    torch.set_default_dtype(torch.float32)
    EulerDiscreteScheduler(**strip(preset["scheduler"])).save_pretrained(SDXL / "scheduler")
    tokenizer = ROOT / "reference" / "fixtures" / "tokenizer"
    harness_models.tokenizer_folder(SDXL / "tokenizer", tokenizer, "<|endoftext|>")
    harness_models.tokenizer_folder(SDXL / "tokenizer_2", tokenizer, "!")
    harness_models.write_model_index(SDXL, "StableDiffusionXLPipeline", {
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    })


DIFFUSERS = """
import sys, time
print(f"timing: start at 0 s (unix {time.time():.3f})", file=sys.stderr)
import torch
import diffusers
print(f"timing: imported at 0 s (unix {time.time():.3f})", file=sys.stderr)
model, kind, steps, size, prompt, out = sys.argv[1:7]
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[kind]
index = open(model + "/model_index.json").read()
sd3 = "StableDiffusion3Pipeline" in index
cls = (diffusers.StableDiffusion3Pipeline if sd3 else diffusers.StableDiffusionXLPipeline
       if "StableDiffusionXLPipeline" in index else diffusers.StableDiffusionPipeline)
pipe = cls.from_pretrained(model, torch_dtype=dtype)
if not sd3:
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
print(f"timing: model loaded at 0 s (unix {time.time():.3f})", file=sys.stderr)
def on_step(p, i, t, kw):
    print(f"timing: step {i + 1}/{steps} done at 0 s (unix {time.time():.3f})", file=sys.stderr)
    return kw
image = pipe(prompt, negative_prompt="", num_inference_steps=int(steps), guidance_scale=5.0,
             height=int(size), width=int(size), generator=torch.Generator("cpu").manual_seed(0),
             callback_on_step_end=on_step).images[0]
image.save(out)
print(f"timing: written at 0 s (unix {time.time():.3f})", file=sys.stderr)
"""


def timed(command: list[str]) -> dict:
    """Wall/user/system seconds and peak RSS (GiB) of `command` under
    /usr/bin/time -v, and its milestones in seconds since it was spawned."""
    spawned = time.time()
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{result.stderr[-3000:]}")
    text = result.stderr
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", text)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    number = lambda label: float(re.search(label + r": ([\d.]+)", text).group(1))  # noqa: E731
    marks = {m.group(1): float(m.group(2)) - spawned
             for m in re.finditer(r"timing: (.+?) at [\d.]+ s \(unix ([\d.]+)\)", text)}
    steps = sorted((k for k in marks if k.startswith("step ")), key=lambda k: marks[k])
    return {
        "wall": hours * 3600 + minutes * 60 + seconds,
        "user": number(r"User time \(seconds\)"),
        "sys": number(r"System time \(seconds\)"),
        "rss": number(r"Maximum resident set size \(kbytes\)") / 2**20,
        "loaded": marks.get("model loaded", float("nan")),
        # from_pretrained alone for diffusers (after its imports)
        "load": marks.get("model loaded", float("nan")) - marks.get("imported", 0.0),
        "tail": marks.get("written", float("nan")) - (marks[steps[-1]] if steps else float("nan")),
        "first": marks[steps[0]] if steps else float("nan"),
        "per_step": (marks[steps[-1]] - marks[steps[0]]) / max(len(steps) - 1, 1) if steps else float("nan"),
    }


def gguf_unet(args: argparse.Namespace, model: Path) -> Path:
    """The folder's UNet as a GGUF file of `--gguf`'s type, made by `sd convert` once."""
    path = CACHE / f"{model.name}-unet-{args.gguf}.gguf"
    if not path.exists():
        subprocess.run([args.sd, "convert", str(model), str(path), "--type", args.gguf], check=True)
    return path


def commands(args: argparse.Namespace, model: Path, out: Path) -> dict:
    size = str(args.size)
    source = ["--model", str(model)]
    if args.gguf:
        source = ["--model", str(gguf_unet(args, model)), "--config-dir", str(model)]
    sd = [args.sd, "txt2img", *source, "--prompt", PROMPT,
          "--negative-prompt", "", "--steps", str(args.steps), "--guidance", "5", "--width", size,
          "--height", size, "--dtype", args.dtype, "--seed", "0", "--out", str(out / "sd.png")]
    if not args.no_timings:
        sd.append("--timings")
    if args.model in ("sd15", "sdxl"):
        sd += ["--scheduler", "euler"]
    if args.low_memory:
        sd.append("--low-memory")
    diffusers = [sys.executable, "-c", DIFFUSERS, str(model), args.dtype, str(args.steps), size, PROMPT,
                 str(out / "diffusers.png")]
    return {"sd": sd, "diffusers": diffusers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sd15", "sdxl", "sd35"], default="sd15")
    parser.add_argument("--gguf", choices=["q8_0", "q5_1", "q5_0", "q4_1", "q4_0"],
                        help="sd runs the UNet from a GGUF file of this type (made by `sd convert`)")
    parser.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", choices=["sd", "diffusers"])
    parser.add_argument("--low-memory", action="store_true", help="sd with --low-memory")
    parser.add_argument("--sd", default=str(ROOT / "target/release/sd"), help="the sd binary to time")
    parser.add_argument("--no-timings", action="store_true", help="an sd binary older than --timings")
    args = parser.parse_args()
    if args.model == "sd15":
        sys.path.insert(0, str(ROOT / "benches"))
        import side_by_side

        side_by_side.make_model()
        model = side_by_side.MODEL
    elif args.model == "sdxl":
        make_sdxl()
        model = SDXL
    else:
        make_sd35()
        model = SD35
    out = Path(os.environ.get("TMPDIR", "/tmp"))
    sides = [s for s in ("diffusers", "sd") if args.only in (None, s)]
    results: dict = {side: [] for side in sides}
    for _ in range(args.runs):
        for side in sides:
            results[side].append(timed(commands(args, model, out)[side]))
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"{args.model}, {args.dtype}, {args.size}x{args.size}, {args.steps} steps, CFG, "
          f"threads {threads}, median of {args.runs}")
    keys = ["wall", "user", "sys", "rss", "load", "loaded", "first", "per_step", "tail"]
    print("| run | wall s | user s | sys s | peak RSS GiB | load s | loaded at s | step 1 done at s | s/step "
          "| last step to written s |")
    print("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
    median = {side: {k: statistics.median(r[k] for r in runs) for k in keys} for side, runs in results.items()}
    for side, row in median.items():
        print(f"| {side} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    if len(median) == 2:
        sd, ref = median["sd"], median["diffusers"]
        print("\nratios sd/diffusers: " + ", ".join(f"{k} {sd[k] / ref[k]:.2f}x" for k in keys))


if __name__ == "__main__":
    main()
