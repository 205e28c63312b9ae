"""Upscaler models with random weights, built with spandrel's own classes, in the
key layouts people's files use, and spandrel's outputs on a test image
(fixtures/upscale/*.safetensors, outputs/upscale.safetensors):

- `esrgan-x4`: ESRGAN's original layout (`model.0`, `model.1.sub.N.RDBk.convj.0`), 4x;
- `realesrgan-x2`: BasicSR/Real-ESRGAN's names (`conv_first`, `body.N.rdbk.convj`,
  `conv_body`, `conv_up1`, `conv_hr`, `conv_last`) for an x2 model that pixel-unshuffles its
  input (Real-ESRGAN's `RealESRGAN_x2plus` form), under BasicSR's `params_ema` prefix;
- `bsrgan-x4`: BSRGAN's names (`RRDB_trunk`, `trunk_conv`, `upconv1`, `HRconv`);
- `esrgan-plus-x2`: ESRGAN+ (`conv1x1` paths), 2x, original layout;
- `compact-x4`: Real-ESRGAN's SRVGGNetCompact (PReLU), 4x.

`esrgan-x4.pth` and `realesrgan-x2.pth` are the same weights as `torch.save` writes them
(the zip checkpoint; the latter as BasicSR's `{"params_ema": ...}`); `malicious.pth` is a
checkpoint whose unpickling would run a shell command (`os.system`), which sd-core's reader
must refuse without running.

Each file is loaded back through spandrel's `ModelLoader` (so its detection is the
reference's), and run on images/init-32.png (0..1, f32; `esrgan-x4` also bf16) through
the descriptor's call (spandrel's padding and clamping). `esrgan-x4.tiled` is the same model
over 16-pixel tiles sharing 4 pixels, composed here as sd-upscale's `tile.rs` documents it
(ramps `(j + 1) / (overlap * scale + 1)`, the weighted sum divided by the summed weights, f32).
Random weights draw noise."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

IMAGE = "images/init-32.png"


def esrgan_to_basicsr(state: dict, blocks: int, prefix: str, names: dict) -> dict:
    """ESRGAN's original names as BasicSR (`names` = body/rdb/trunk/up/hr) writes them."""
    body, rdb, trunk, up, hr = names["body"], names["rdb"], names["trunk"], names["up"], names["hr"]
    out = {}
    tops = sorted({int(k.split(".")[1]) for k in state if k.startswith("model.")})
    last = max(tops)
    for key, value in state.items():
        parts = key.split(".")
        i = int(parts[1])
        if i == 0:
            new = f"conv_first.{parts[-1]}"
        elif i == 1 and parts[3] == str(blocks):
            new = f"{trunk}.{parts[-1]}"
        elif i == 1:
            new = f"{body}.{parts[3]}.{rdb}{parts[4][3:]}.{parts[5]}.{parts[-1]}"
        elif i == last:
            new = f"conv_last.{parts[-1]}"
        elif i == last - 2:
            new = f"{hr}.{parts[-1]}"
        else:
            new = f"{up}{i // 3}.{parts[-1]}"
        out[prefix + new] = value
    return out


def image() -> torch.Tensor:
    from PIL import Image

    here = Path(__file__).resolve().parent / "fixtures"
    pixels = np.asarray(Image.open(here / IMAGE).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255


def tiled(model, x: torch.Tensor, scale: int, size: int, overlap: int) -> torch.Tensor:
    """sd-upscale's tiling, step for step."""
    _, _, h, w = x.shape

    def starts(length):
        if length <= size:
            return [0]
        out, s = [], 0
        while s + size < length:
            out.append(s)
            s += size - overlap
        return out + [length - size]

    def ramp(n, r, before, after):
        values = []
        for j in range(n):
            wt = 1.0
            if before:
                wt = min(wt, min((j + 1) / (r + 1), 1.0))
            if after:
                wt = min(wt, min((n - j) / (r + 1), 1.0))
            values.append(wt)
        return torch.tensor(values, dtype=torch.float32)

    ys, xs = starts(h), starts(w)
    total, weights = None, torch.zeros(1, 1, h * scale, w * scale)
    for iy, y in enumerate(ys):
        for ix, x0 in enumerate(xs):
            th, tw = min(size, h), min(size, w)
            out = model(x[:, :, y:y + th, x0:x0 + tw]).float()
            wy = ramp(th * scale, overlap * scale, iy > 0, iy + 1 < len(ys))
            wx = ramp(tw * scale, overlap * scale, ix > 0, ix + 1 < len(xs))
            weight = wy.unsqueeze(1) * wx.unsqueeze(0)
            if total is None:
                total = torch.zeros(x.shape[0], out.shape[1], h * scale, w * scale)
            region = (slice(None), slice(None), slice(y * scale, (y + th) * scale),
                      slice(x0 * scale, (x0 + tw) * scale))
            total[region] += out * weight
            weights[region] += weight
    return (total / weights).clamp(0, 1)


def save_pth(obj, path: Path, check: bool = True) -> None:
    """`torch.save`'s zip checkpoint (the `.pth` upscalers are distributed as), written
    again with a fixed serialization id and dates so that the fixture is the same each run;
    torch.load reads it back equal."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith(".data/serialization_id"):
                data = b"0" * len(data)
            # the archive's folder is the file's stem, as torch.save names it
            name = path.stem + info.filename[info.filename.index("/"):]
            out.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    if check:
        back = torch.load(path, weights_only=True)
        flat, original = back.get("params_ema", back), obj.get("params_ema", obj)
        assert all(torch.equal(flat[k], original[k]) for k in original), path


class Evil:
    """What a malicious checkpoint holds: unpickling it runs a shell command."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/sd-rs-pickle-ran",))


def write_upscalers(fixtures: Path, outputs: Path) -> None:
    from spandrel import ModelLoader
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    out = fixtures / "upscale"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    torch.manual_seed(50)
    basicsr = dict(body="body", rdb="rdb", trunk="conv_body", up="conv_up", hr="conv_hr")
    bsrgan = dict(body="RRDB_trunk", rdb="RDB", trunk="trunk_conv", up="upconv", hr="HRconv")

    def randomized(model):
        # spandrel's init is for training; larger weights make the test see every layer
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape) * 0.05)
        return model.eval()

    models = {
        "esrgan-x4": (randomized(ESRGAN(num_filters=16, num_blocks=1, scale=4)), None),
        "realesrgan-x2": (randomized(ESRGAN(in_nc=12, num_filters=16, num_blocks=1, scale=4, shuffle_factor=2)),
                          ("params_ema.", basicsr)),
        "bsrgan-x4": (randomized(ESRGAN(num_filters=16, num_blocks=1, scale=4)), ("", bsrgan)),
        "esrgan-plus-x2": (randomized(ESRGAN(num_filters=16, num_blocks=1, scale=2, plus=True)), None),
        "compact-x4": (randomized(Compact(num_feat=16, num_conv=4, upscale=4)), None),
    }
    x = image()
    tensors = {}
    for name, (model, layout) in models.items():
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if layout is not None:
            prefix, names = layout
            blocks = model.hyperparameters["num_blocks"]
            state = esrgan_to_basicsr(state, blocks, prefix, names)
        save_file(state, out / f"{name}.safetensors")
        if name in ("esrgan-x4", "realesrgan-x2"):
            # as released: a plain state dict, and BasicSR's {"params_ema": state}
            plain = {k.removeprefix("params_ema."): v for k, v in state.items()}
            save_pth(plain if name == "esrgan-x4" else {"params_ema": plain}, out / f"{name}.pth")
        loaded = {k.removeprefix("params_ema."): v for k, v in state.items()}
        descriptor = ModelLoader().load_from_state_dict(loaded).eval()
        assert descriptor.scale in (2, 4), (name, descriptor.scale)
        with torch.no_grad():
            tensors[f"{name}.f32"] = descriptor(x)
            if name == "esrgan-x4":
                tensors[f"{name}.tiled"] = tiled(descriptor.model, x, 4, 16, 4)
                descriptor.model.to(torch.bfloat16)
                tensors[f"{name}.bf16"] = descriptor(x.to(torch.bfloat16))
    save_file(tensors, outputs / "upscale.safetensors")
    # a checkpoint that would run a command under torch.load (weights_only=False)
    save_pth({"conv_first.weight": torch.zeros(1), "hook": Evil()}, out / "malicious.pth", check=False)
