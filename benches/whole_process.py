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
    .venv/bin/python benches/whole_process.py --model flux --dtype bf16 --steps 2 --low-memory   # issue 29's run
    .venv/bin/python benches/whole_process.py --model sd15 --dtype bf16 --steps 20 --size 512 --compiled --torch-compile

--runs N alternates the two sides N times and reports medians. Needs
`bash scripts/setup.sh --reference` and `cargo build --release -p sd-cli`.
The models: SD1.5's architecture (benches/side_by_side.py writes it to
~/.cache/sd-rs/sd15-random, 4 GB f32) and SD3.5 Medium's with T5-XXL
(~/.cache/sd-rs/sd35-medium-random, 16 GB bf16; its tokenizers are stand-ins:
the project's CLIP vocabulary, the tiny test T5 vocabulary, so token ids
differ from the real model's, the work does not), SDXL base's
(~/.cache/sd-rs/sdxl-random, 7 GB bf16; --gguf runs its UNet from a GGUF
file `sd convert` makes beside it), FLUX.1-schnell's (~/.cache/sd-rs/flux-schnell-random:
the transformer in fp8 both as BFL's single file, `flux1-schnell-fp8.safetensors`, which sd
runs, and as a diffusers folder, which diffusers loads with `torch_dtype=float8_e4m3fn` and
`enable_layerwise_casting` (its T5 too, once loaded): the 24 GB bf16 transformer does not
fit this 24 GiB machine; 36 GB on disk in all). Random weights draw noise.
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
FLUX = CACHE / "flux-schnell-random"
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


def make_flux() -> None:
    """FLUX.1-schnell's architecture: CLIP-L, T5-XXL and the VAE in bf16, the transformer
    drawn tensor by tensor (layer weights in fp8, the rest in bf16) as a diffusers folder,
    then under BFL's names as `flux1-schnell-fp8.safetensors`."""
    if (FLUX / "model_index.json").exists():
        return
    import shutil

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    sys.path.insert(0, str(ROOT / "reference"))
    import harness_flux
    import harness_models

    preset = json.loads((ROOT / "crates/sd-pipeline/src/presets/sd35.json").read_text())
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    vae = dict(strip(preset["vae"]), scaling_factor=0.3611, shift_factor=0.1159)
    clip = dict(preset["text_encoder"], architectures=["CLIPTextModel"])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    for sub, build in [("vae", lambda: AutoencoderKL(**vae)),
                       ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**clip))),
                       ("text_encoder_2", lambda: T5EncoderModel(T5Config(**preset["text_encoder_3"])))]:
        model = build()
        model.save_pretrained(FLUX / sub, max_shard_size="20GB")
        del model
    torch.set_default_dtype(torch.float32)
    config = dict(harness_flux.FULL, guidance_embeds=False)
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    model.save_config(FLUX / "transformer")
    state = {}
    for name, param in model.state_dict().items():
        value = torch.randn(param.shape, dtype=torch.bfloat16) * 0.02
        state[name] = value.to(torch.float8_e4m3fn) if value.ndim >= 2 else value
    del model
    save_file(state, FLUX / "transformer" / "diffusion_pytorch_model.safetensors")
    bfl = harness_flux.to_bfl(state, config["num_layers"], config["num_single_layers"])
    del state
    save_file({k: v.contiguous() for k, v in bfl.items()}, FLUX / "flux1-schnell-fp8.safetensors")
    del bfl
    with safe_open(FLUX / "flux1-schnell-fp8.safetensors", "pt") as f:
        assert f.get_slice("double_blocks.0.img_attn.qkv.weight").get_dtype() == "F8_E4M3"
    FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                                    base_image_seq_len=256, max_image_seq_len=4096).save_pretrained(
        FLUX / "scheduler")
    harness_models.tokenizer_folder(FLUX / "tokenizer", ROOT / "reference/fixtures/tokenizer", "<|endoftext|>",
                                    "json")
    shutil.copytree(ROOT / "reference/fixtures/sd3/tokenizer_3", FLUX / "tokenizer_2", dirs_exist_ok=True)
    index = json.loads((ROOT / "reference/fixtures/flux/pipeline-schnell/model_index.json").read_text())
    (FLUX / "model_index.json").write_text(json.dumps(index, indent=1))


DIFFUSERS_FLUX = """
import os, sys, threading, time
print(f"timing: start at 0 s (unix {time.time():.3f})", file=sys.stderr)
import torch
import diffusers
from transformers import T5EncoderModel
print(f"timing: imported at 0 s (unix {time.time():.3f})", file=sys.stderr)
model, kind, steps, size, prompt, out, limit = sys.argv[1:8]
def watch():  # a clean refusal rather than the kernel's OOM killer
    while True:
        rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
        if rss > float(limit):
            print(f"diffusers: over {limit} GiB resident ({rss:.1f}), stopped", file=sys.stderr)
            os._exit(3)
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
bf16, fp8 = torch.bfloat16, torch.float8_e4m3fn
t5 = T5EncoderModel.from_pretrained(model + "/text_encoder_2", torch_dtype=bf16)
# (T5's feed-forward casts its input to `wo`'s dtype: `wo` stays bf16)
skip = diffusers.hooks.layerwise_casting.DEFAULT_SKIP_MODULES_PATTERN + ("wo",)
diffusers.hooks.apply_layerwise_casting(t5, storage_dtype=fp8, compute_dtype=bf16, skip_modules_pattern=skip)
transformer = diffusers.FluxTransformer2DModel.from_pretrained(model + "/transformer", torch_dtype=fp8)
# (every layer: loading in fp8 made the norms fp8 too, so none may be skipped)
transformer.enable_layerwise_casting(storage_dtype=fp8, compute_dtype=bf16, skip_modules_pattern=("^none$",))
# (the pipeline takes its dtypes from the models' parameters, fp8 now, and torch cannot
# draw or divide in fp8: the two models report their compute dtype instead)
for m in (transformer, t5):
    m.__class__ = type(type(m).__name__, (type(m),), {"dtype": property(lambda self: bf16)})
pipe = diffusers.FluxPipeline.from_pretrained(model, transformer=transformer, text_encoder_2=t5, torch_dtype=bf16)
pipe.set_progress_bar_config(disable=True)
print(f"timing: model loaded at 0 s (unix {time.time():.3f})", file=sys.stderr)
def on_step(p, i, t, kw):
    print(f"timing: step {i + 1}/{steps} done at 0 s (unix {time.time():.3f})", file=sys.stderr)
    return kw
image = pipe(prompt, num_inference_steps=int(steps), guidance_scale=0.0, max_sequence_length=256,
             height=int(size), width=int(size), generator=torch.Generator("cpu").manual_seed(0),
             callback_on_step_end=on_step).images[0]
image.save(out)
print(f"timing: written at 0 s (unix {time.time():.3f})", file=sys.stderr)
"""


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
if sys.argv[7:] == ["compile"]:  # the documented line, with freezing as issue 32 measured it
    torch._inductor.config.freezing = True
    pipe.unet = torch.compile(pipe.unet)
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
    text = result.stderr
    if result.returncode != 0:
        # (recorded, not fatal: a side that cannot run is a result too)
        print(f"{command[0]} failed (exit {result.returncode}):\n{text[-1500:]}", file=sys.stderr)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        nan = float("nan")
        return {k: nan for k in ["wall", "user", "sys", "loaded", "load", "tail", "first", "per_step"]} | {
            "rss": int(rss.group(1)) / 2**20 if rss else nan}
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
    if args.model == "flux":
        source = ["--model", str(model / "flux1-schnell-fp8.safetensors"), "--config-dir", str(model)]
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
    if args.model == "flux":
        sd[sd.index("--guidance") + 1] = "0"
        diffusers[2] = DIFFUSERS_FLUX
        diffusers.append(str(args.limit_gib))
    return {"sd": sd, "diffusers": diffusers, "sd --compiled": [*sd, "--compiled"],
            "diffusers + torch.compile": [*diffusers, "compile"]}


def compile_once(args: argparse.Namespace, model: Path) -> None:
    """`sd compile` for the run's size and dtype (untimed: the package is kept), and what it cost."""
    started = time.time()
    out = subprocess.run([args.sd, "compile", "--model", str(model), "--width", str(args.size), "--height",
                          str(args.size), "--dtype", args.dtype], capture_output=True, text=True, check=True, cwd=ROOT)
    packages = [Path(line) for line in out.stdout.strip().splitlines()]  # (the UNet's, the decoder's)
    sizes = ", ".join(f"{p.stat().st_size / 2**20:.0f} MiB: {p.name}" for p in packages)
    print(f"sd compile: {time.time() - started:.0f} s (0 when kept from before), packages {sizes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sd15", "sdxl", "sd35", "flux"], default="sd15")
    parser.add_argument("--limit-gib", type=float, default=21.0,
                        help="flux: diffusers stops itself above this resident size")
    parser.add_argument("--gguf", choices=["q8_0", "q5_1", "q5_0", "q4_1", "q4_0"],
                        help="sd runs the UNet from a GGUF file of this type (made by `sd convert`)")
    parser.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", choices=["sd", "diffusers"])
    parser.add_argument("--low-memory", action="store_true", help="sd with --low-memory")
    parser.add_argument("--sd", default=str(ROOT / "target/release/sd"), help="the sd binary to time")
    parser.add_argument("--compiled", action="store_true",
                        help="also sd txt2img --compiled (after an untimed `sd compile`)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also diffusers with its UNet torch.compile'd (freezing on; the first step compiles)")
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
    elif args.model == "flux":
        make_flux()
        model = FLUX
    else:
        make_sd35()
        model = SD35
    out = Path(os.environ.get("TMPDIR", "/tmp"))
    sides = [s for s in ("diffusers", "sd") if args.only in (None, s)]
    if args.torch_compile:
        sides.insert(1, "diffusers + torch.compile")
    if args.compiled:
        compile_once(args, model)
        sides.append("sd --compiled")
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
    if "diffusers" in median:
        ref = median["diffusers"]
        for side in [s for s in median if s != "diffusers"]:
            print(f"\nratios {side} / diffusers: "
                  + ", ".join(f"{k} {median[side][k] / ref[k]:.2f}x" for k in keys))


if __name__ == "__main__":
    main()
