"""Side by side, whole process: the full-size SD3.5 Medium architecture
(random weights, T5-XXL included) through diffusers' StableDiffusion3Pipeline
and through `sd txt2img`, bf16, 256x256, 4 steps, CFG, on the CPU. Each run is
its own process under `/usr/bin/time -v`: wall time and peak resident memory.

    .venv/bin/python benches/sd3_side_by_side.py            # both, --low-memory for sd
    .venv/bin/python benches/sd3_side_by_side.py --only sd  # one side

Needs `bash scripts/setup.sh --reference` and `cargo build --release -p sd-cli`.
The random model (SD3.5 Medium's configs from reference/manifests and the
SD3.5 presets, bf16 weights drawn once) is written to
~/.cache/sd-rs/sd35-medium-random (about 16 GB); its tokenizers are stand-ins
(the project's CLIP vocabulary, the tiny test T5 vocabulary): the token ids
differ from the real model's, the work does not. Random weights draw noise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path(os.environ.get("SD_RS_CACHE", Path.home() / ".cache" / "sd-rs")) / "sd35-medium-random"
PROMPT = "a photo of a red fox in the snow, detailed"


def make_model() -> None:
    """Every component in bf16, drawn directly in bf16 (T5-XXL in f32 would
    not fit next to the rest in 24 GB)."""
    if (MODEL / "model_index.json").exists():
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
        model.save_pretrained(MODEL / sub, max_shard_size="20GB")
        del model
    torch.set_default_dtype(torch.float32)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(MODEL / "scheduler")
    tokenizer = ROOT / "reference" / "fixtures" / "tokenizer"
    harness_models.tokenizer_folder(MODEL / "tokenizer", tokenizer, "<|endoftext|>", "json")
    harness_models.tokenizer_folder(MODEL / "tokenizer_2", tokenizer, "!", "json")
    shutil.copytree(ROOT / "reference/fixtures/sd3/tokenizer_3", MODEL / "tokenizer_3", dirs_exist_ok=True)
    index = json.loads((ROOT / "reference/fixtures/sd3/pipeline/model_index.json").read_text())
    (MODEL / "model_index.json").write_text(json.dumps(index, indent=1))


DIFFUSERS = """
import sys, time, torch
from diffusers import StableDiffusion3Pipeline
start = time.time()
pipe = StableDiffusion3Pipeline.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)
pipe.set_progress_bar_config(disable=True)
loaded = time.time()
image = pipe(sys.argv[2], negative_prompt="", num_inference_steps=4, guidance_scale=5.0, height=256,
             width=256, generator=torch.Generator("cpu").manual_seed(0)).images[0]
image.save(sys.argv[3])
print(f"load {loaded - start:.1f} s, run {time.time() - loaded:.1f} s", file=sys.stderr)
"""


def timed(command: list[str]) -> dict:
    """Wall seconds and peak RSS (GiB) of `command` under /usr/bin/time -v."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{result.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    lines = [line for line in result.stderr.splitlines() if line.startswith("load ")]
    return {"wall": hours * 3600 + minutes * 60 + seconds, "rss": rss / 2**20, "note": " ".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["sd", "diffusers"])
    parser.add_argument("--no-low-memory", action="store_true", help="sd without --low-memory")
    args = parser.parse_args()
    make_model()
    out = Path(os.environ.get("TMPDIR", "/tmp"))
    env_threads = os.environ.get("OMP_NUM_THREADS", "all")
    rows = {}
    if args.only != "sd":
        rows["diffusers"] = timed([sys.executable, "-c", DIFFUSERS, str(MODEL), PROMPT, str(out / "sd3-diffusers.png")])
    if args.only != "diffusers":
        sd = [str(ROOT / "target/release/sd"), "txt2img", "--model", str(MODEL), "--prompt", PROMPT,
              "--negative-prompt", "", "--steps", "4", "--guidance", "5", "--width", "256", "--height", "256",
              "--dtype", "bf16", "--seed", "0", "--out", str(out / "sd3-sd.png")]
        rows["sd"] = timed(sd + ([] if args.no_low_memory else ["--low-memory"]))
    print(f"SD3.5 Medium architecture, bf16, 256x256, 4 steps, CFG, threads: {env_threads}")
    print("| run | wall s | peak RSS GiB | note |\n| --- | --: | --: | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['wall']:.1f} | {row['rss']:.2f} | {row['note']} |")
    if len(rows) == 2:
        sd, ref = rows["sd"], rows["diffusers"]
        print(f"\nwall {sd['wall'] / ref['wall']:.2f}x diffusers', peak RSS {sd['rss'] / ref['rss']:.2f}x")


if __name__ == "__main__":
    main()
