"""Upscalers side by side: `sd upscale` against spandrel (what A1111 and ComfyUI run), each
in a process of its own under `/usr/bin/time -v`, alternating: wall, peak RSS. Full-size
architectures with random weights (the outputs are noise): ESRGAN 4x (RRDBNet, 64 features,
23 blocks: RealESRGAN_x4plus's size) and Real-ESRGAN's compact 4x (64 features, 32
convolutions: realesr-general-x4v3's size), on a 256x256 image, whole (no tiles), f32.

    .venv/bin/python benches/upscale.py [--runs 3] [--size 256]
    python3 benches/upscale.py --device cuda --dtype f16 --size 512 --sd target/gpu/sd   # GPU machine

On a GPU both run the same device and dtype; where `/usr/bin/time` is missing (the GPU
machine) only wall time is taken. The last column is the largest pixel difference between the
two outputs (0 on the CPU in f32; rounding shows in f16 on a GPU).

Needs `cargo build --release -p sd-cli` and `bash scripts/setup.sh --reference`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SD_RS_CACHE", Path.home() / ".cache" / "sd-rs")) / "upscalers"

SPANDREL = """
import sys, time
import numpy as np, torch
from PIL import Image
from safetensors.torch import load_file
from spandrel import ModelLoader
model, image, out, device, dtype = sys.argv[1:6]
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
torch.set_grad_enabled(False)
descriptor = ModelLoader().load_from_state_dict(load_file(model)).eval().to(device, dtype)
x = torch.from_numpy(np.asarray(Image.open(image).convert("RGB")).copy()).permute(2, 0, 1)[None]
y = descriptor(x.to(device, dtype) / 255).float().cpu()
Image.fromarray((y[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(out)
"""


def make(size: int) -> dict[str, Path]:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    CACHE.mkdir(parents=True, exist_ok=True)
    models = {"esrgan-x4": lambda: ESRGAN(num_filters=64, num_blocks=23, scale=4),
              "compact-x4": lambda: Compact(num_feat=64, num_conv=32, upscale=4)}
    paths = {}
    torch.manual_seed(0)
    for name, build in models.items():
        path = CACHE / f"{name}-full.safetensors"
        if not path.exists():
            save_file({k: v.contiguous() for k, v in build().state_dict().items()}, path)
        paths[name] = path
    image = CACHE / f"noise-{size}.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(image)
    paths["image"] = image
    return paths


def timed(command: list[str]) -> tuple[float, float]:
    if not Path("/usr/bin/time").exists():
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{command[0]} failed:\n{result.stderr[-2000:]}")
        return time.perf_counter() - start, float("nan")
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{result.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    h, m, s = (float(g) if g else 0.0 for g in wall.groups())
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 2**20
    return h * 3600 + m * 60 + s, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sd", default=str(ROOT / "target/release/sd"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    args = parser.parse_args()
    paths = make(args.size)
    out = Path(os.environ.get("TMPDIR", "/tmp"))
    print(f"{args.size}x{args.size} -> 4x, {args.device} {args.dtype}, whole, threads {os.environ.get('OMP_NUM_THREADS', 'all')}, "
          f"median of {args.runs}")
    print("| model | sd wall s | spandrel wall s | ratio | sd peak RSS GiB | spandrel peak RSS GiB | max diff |")
    print("| --- | --: | --: | --: | --: | --: | --: |")
    for name in ("esrgan-x4", "compact-x4"):
        sd, theirs = [], []
        for _ in range(args.runs):
            sd.append(timed([args.sd, "upscale", str(paths["image"]), str(out / "sd-up.png"),
                             "--model", str(paths[name]), "--tile", "0",
                             "--device", args.device, "--dtype", args.dtype]))
            theirs.append(timed([sys.executable, "-c", SPANDREL, str(paths[name]), str(paths["image"]),
                                 str(out / "spandrel-up.png"), args.device, args.dtype]))
        med = lambda runs, i: statistics.median(r[i] for r in runs)  # noqa: E731
        print(f"| {name} | {med(sd, 0):.2f} | {med(theirs, 0):.2f} | {med(sd, 0) / med(theirs, 0):.2f}x | "
              f"{med(sd, 1):.2f} | {med(theirs, 1):.2f} | {pixel_diff(out / 'sd-up.png', out / 'spandrel-up.png')} |")


def pixel_diff(a: Path, b: Path) -> int:
    import numpy as np
    from PIL import Image

    load = lambda p: np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)  # noqa: E731
    return int(np.abs(load(a) - load(b)).max())


if __name__ == "__main__":
    main()
