"""Reference harness: diffusers/transformers outputs the Rust crates must match.

Run from the repository root (after `bash scripts/setup.sh --reference`):

    .venv/bin/python reference/generate.py

It writes, under reference/:
  fixtures/tokenizer/             vocab.json + merges.txt derived from open_clip's
                                  bpe_simple_vocab_16e6.txt.gz (the real CLIP BPE, 49408 tokens)
  fixtures/tiny-sd1/ ...          tiny random-weight models in the diffusers folder layout
                                  (tiny-sd1, tiny-sd2, tiny-sdxl, tiny-sd1-inpaint). Random
                                  weights: whatever they generate is noise.
  fixtures/outputs/*.safetensors  reference outputs: tokenizer ids, text-encoder hidden states,
                                  UNet outputs, VAE encode/decode, scheduler traces, txt2img
                                  latents, shared layers; with a .json beside some for metadata
  fixtures/lora/                  random LoRA / LyCORIS / textual-inversion files in each
                                  format, with outputs/lora.* from diffusers (harness_lora.py)
  fixtures/controlnet/            random ControlNets (diffusers folders and an original single
                                  file), control images, with outputs/controlnet.* from diffusers
                                  (harness_controlnet.py)
  fixtures/taesd/                 a random tiny autoencoder (diffusers folder and the original
                                  TAESD layout), with outputs/taesd.* from diffusers
                                  (harness_taesd.py)
  fixtures/outputs/sizes.*        72x64 txt2img, img2img and ControlNet runs, and the UNets on
                                  odd latent sizes (harness_sizes.py)
  fixtures/sd3/, outputs/sd3_*.*, fixtures/single-file/tiny-sd3*.safetensors
                                  SD3's parts (16-channel VAE, T5, transformers), a tiny SD3
                                  pipeline and diffusers' runs of its three pipelines, and the
                                  same in Stability's single-file layout (harness_sd3.py)
  fixtures/outputs/flow_schedulers.*
                                  flow-matching sampler traces (harness_flow.py)
  manifests/{sd15,sd21,sdxl,sd35}/*.json
                                  weight names and shapes of the full-size models, built from
                                  their configs on the meta device (no weights needed)

Everything is seeded and single-threaded, so a rerun reproduces the files byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness_controlnet  # noqa: E402
import harness_flow  # noqa: E402
import harness_flux  # noqa: E402
import harness_flux_lora  # noqa: E402
import harness_hires  # noqa: E402
import harness_ip_adapter  # noqa: E402
import harness_upscale  # noqa: E402
import harness_gguf  # noqa: E402
import harness_lora  # noqa: E402
import harness_models  # noqa: E402
import harness_outputs  # noqa: E402
import harness_schedulers  # noqa: E402
import harness_sd3  # noqa: E402
import harness_sd3_lora  # noqa: E402
import harness_single_file  # noqa: E402
import harness_sizes  # noqa: E402
import harness_taesd  # noqa: E402

FIXTURES = HERE / "fixtures"
OPEN_CLIP = "open-clip-torch==3.3.0"
BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (the byte-level BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def fetch_bpe(cache: Path) -> bytes:
    """The gzipped BPE merges list from the open_clip_torch wheel (downloaded once, no deps)."""
    wheels = sorted(cache.glob("open_clip_torch-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", OPEN_CLIP, "-d", str(cache)],
            check=True,
        )
        wheels = sorted(cache.glob("open_clip_torch-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return wheel.read(BPE_IN_WHEEL)


def derive_tokenizer_files(out: Path, cache: Path) -> None:
    """vocab.json and merges.txt exactly as in the official CLIP tokenizer folders."""
    lines = gzip.open(io.BytesIO(fetch_bpe(cache))).read().decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP uses the next 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["tokenizer", "models", "single-file", "outputs", "lora", "controlnet", "taesd", "sizes", "sd3", "sd3-lora", "schedulers",
             "gguf", "flux", "flux-lora", "upscale", "hires", "ip-adapter", "manifests"]
    parser.add_argument("--only", choices=parts, action="append")
    args = parser.parse_args()
    only = set(args.only or parts)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    outputs = FIXTURES / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path.home() / ".cache" / "sd-rs" / "wheels"
        if "tokenizer" in only:
            derive_tokenizer_files(FIXTURES / "tokenizer", cache)
        if "models" in only:
            for path in [*FIXTURES.glob("tiny-*"), FIXTURES / "tokenizer-added"]:
                shutil.rmtree(path, ignore_errors=True)
            harness_models.write_tiny_models(FIXTURES, FIXTURES / "tokenizer")
        if "single-file" in only:
            harness_single_file.write_single_files(FIXTURES)
        if "outputs" in only:
            harness_outputs.write_outputs(FIXTURES, outputs, Path(tmp))
        if "lora" in only:
            harness_lora.write_lora(FIXTURES, outputs)
        if "controlnet" in only:
            harness_controlnet.write_controlnet(FIXTURES, outputs)
        if "taesd" in only:
            harness_taesd.write_taesd(FIXTURES, outputs)
        if "sizes" in only:
            harness_sizes.write_sizes(FIXTURES, outputs)
        if "sd3" in only:
            harness_sd3.write_sd3_vae(FIXTURES, outputs)
            harness_sd3.write_t5(FIXTURES, outputs)
            harness_sd3.write_mmdit(FIXTURES, outputs)
            harness_sd3.write_sd3_pipeline(FIXTURES, outputs)
            harness_sd3.write_sd3_runs(FIXTURES, outputs)
            harness_sd3.write_sd3_single_files(FIXTURES, outputs)
        if "sd3" in only or "sd3-lora" in only:
            harness_sd3_lora.write_sd3_lora(FIXTURES, outputs)
            harness_sd3_lora.write_sd3_kohya_lora(FIXTURES, outputs)
        if "gguf" in only:
            harness_gguf.write_gguf(FIXTURES, outputs)
            harness_gguf.write_gguf_models(FIXTURES, outputs, Path(tmp))
        if "flux" in only:
            harness_flux.write_flux_transformer(FIXTURES, outputs)
            harness_flux.write_flux_pipeline(FIXTURES, outputs)
            harness_flux.write_flux_single_files(FIXTURES)
        if "flux" in only or "flux-lora" in only:
            harness_flux_lora.write_flux_loras(FIXTURES, outputs)
        if "upscale" in only:
            harness_upscale.write_upscalers(FIXTURES, outputs)
        if "upscale" in only or "hires" in only:
            harness_hires.write_hires(FIXTURES, outputs)
        if "ip-adapter" in only:
            harness_ip_adapter.write_ip_adapter(FIXTURES, outputs)
        if "schedulers" in only:
            harness_schedulers.write_traces(outputs)
            harness_flow.write_flow_traces(outputs)
        if "manifests" in only:
            harness_models.write_manifests(HERE / "manifests")
            harness_single_file.write_single_file_manifests(HERE / "manifests")
            harness_controlnet.write_controlnet_manifests(HERE / "manifests")
            harness_sd3.write_sd3_single_file_manifests(HERE / "manifests")
            harness_flux.write_flux_manifests(HERE / "manifests")
            harness_ip_adapter.write_ip_adapter_manifests(HERE / "manifests")
    print("reference fixtures written under", FIXTURES.relative_to(HERE.parent))


if __name__ == "__main__":
    main()
