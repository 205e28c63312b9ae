"""compare_fixtures.py against every committed output file: a copy moved
within the error model passes without a crash, a real change is reported.

    .venv/bin/python -m pytest -q reference/test_compare_fixtures.py

(run by scripts/check-fixtures.sh, before it regenerates the fixtures)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import compare_fixtures as cf

ROOT = Path(__file__).resolve().parent
OUTPUTS = sorted((ROOT / "fixtures" / "outputs").glob("*.safetensors"))


def rel(path: Path) -> Path:
    return path.relative_to(ROOT)


def nudged(tensor: torch.Tensor) -> torch.Tensor:
    """What another CPU might write: floats moved by about one ulp at the
    tensor's scale (rounded to its dtype), 8-bit images by one level,
    integers (token ids) unchanged."""
    if tensor.dtype == torch.uint8:
        up = tensor.int() + 1
        return torch.where(up > 255, tensor.int() - 1, up).to(torch.uint8)
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return tensor.clone()
    x = tensor.double()
    scale = x.abs().nan_to_num(0.0, 0.0, 0.0).max().item()
    step = 0.5 * cf.eps(cf.computed_in(None, tensor)) * scale
    return (x + step).to(tensor.dtype)


def changed(tensor: torch.Tensor) -> torch.Tensor:
    """A real difference: one element far beyond any bound."""
    out = tensor.clone()
    flat = out.view(-1)
    if tensor.dtype == torch.uint8:
        flat[0] = (int(flat[0]) + 128) % 256
    elif tensor.is_floating_point():
        x = tensor.double().nan_to_num(0.0, 0.0, 0.0)
        flat[0] = float(x.view(-1)[0]) + 1.0 + 1000.0 * x.abs().max().item()
    else:
        flat[0] = int(flat[0]) + 1
    return out


@pytest.mark.parametrize("path", OUTPUTS, ids=lambda p: p.name)
def test_a_copy_moved_within_the_error_model_passes(path: Path, tmp_path: Path):
    tensors = load_file(path)
    copy = tmp_path / path.name
    save_file({k: nudged(v) for k, v in tensors.items()}, copy)
    assert cf.compare_tensors(rel(path), path, copy) == []


@pytest.mark.parametrize("path", OUTPUTS, ids=lambda p: p.name)
def test_a_real_change_of_any_key_is_reported(path: Path, tmp_path: Path):
    tensors = load_file(path)
    runs = cf.runs_of(path.with_suffix(".json"))
    # every kind of key the file holds: images, floats and integers, each
    # dtype, with and without a run record
    kinds = {}
    for key, tensor in sorted(tensors.items()):
        if tensor.numel() == 0:
            continue
        if path.name == cf.DISCONTINUOUS[0] and key.startswith(cf.DISCONTINUOUS[1]):
            continue
        kinds.setdefault((tensor.dtype, cf.run_for(key, runs) is None), key)
    assert kinds, f"{path.name}: no keys"
    for key in kinds.values():
        copy = tmp_path / f"{key}.safetensors"
        save_file({**tensors, key: changed(tensors[key])}, copy)
        problems = cf.compare_tensors(rel(path), path, copy)
        assert len(problems) == 1 and problems[0].startswith(f"{key}:"), problems


def test_the_whole_tree_is_compared_and_differences_listed(tmp_path: Path, capsys):
    committed, regenerated = tmp_path / "committed", tmp_path / "regenerated"
    for tree in (committed, regenerated):
        (tree / "fixtures" / "outputs").mkdir(parents=True)
    for name in ("controlnet", "taesd"):  # 8-bit images of runs without a dtype
        for suffix in (".safetensors", ".json"):
            src = ROOT / "fixtures" / "outputs" / (name + suffix)
            if src.exists():
                shutil.copy(src, committed / "fixtures" / "outputs" / src.name)
        tensors = load_file(ROOT / "fixtures" / "outputs" / f"{name}.safetensors")
        out = regenerated / "fixtures" / "outputs" / f"{name}.safetensors"
        save_file({k: nudged(v) for k, v in tensors.items()}, out)
        json = ROOT / "fixtures" / "outputs" / f"{name}.json"
        if json.exists():
            shutil.copy(json, regenerated / "fixtures" / "outputs" / json.name)
    (committed / "config.json").write_text("{}")
    (regenerated / "config.json").write_text('{"changed": 1}')
    assert cf.main([str(committed), str(regenerated)]) == 1
    printed = capsys.readouterr().out
    assert "config.json: differs" in printed
    assert "controlnet.safetensors" in printed and "taesd.safetensors" in printed
