"""Compares a regenerated reference/ tree with the committed one.

    .venv/bin/python reference/compare_fixtures.py COMMITTED_DIR REGENERATED_DIR

Outputs that cannot depend on the CPU must be byte-identical: model weights,
configs, tokenizer files, manifests, JSON metadata, and every integer tensor
(token ids). Floating-point outputs are compared with the error model of
docs/reference.md (the same one the Rust tests use):

    |regenerated - committed| <= K * eps(dtype) * S * N

K = 32 in f32, 4 in f16/bf16; eps the dtype's machine epsilon; S the largest
magnitude of the committed tensor; N the model evaluations that produced it
(1 for one forward pass; the run's steps, twice for second-order samplers).
Values stored in f64 (schedules) were computed in f32 and get f32's eps.
Decoded 8-bit images, the end of the same chain plus the VAE, may move by
1 + floor(255 * K * eps * (N + 1)) levels. Cases where diffusers itself is
discontinuous (DISCONTINUOUS, as in crates/sd-scheduler/tests/golden.rs) must
only keep their shapes.
Prints one line per file and exits non-zero on any difference beyond that.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

K = {torch.float32: 32.0, torch.float64: 32.0, torch.float16: 4.0, torch.bfloat16: 4.0}
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
SECOND_ORDER = {"heun", "dpm2", "dpm2-a"}
# KDPM2-ancestral's last sigma_down is sqrt of a difference of two values an
# ulp apart: 0 on one CPU, NaN on another (docs/reference.md)
DISCONTINUOUS = ("schedulers.safetensors", ("dpm2-a.steps2.", "dpm2-a.squaredcos_cap_v2."))


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def runs_of(json_path: Path) -> dict[str, dict]:
    """key prefix -> run record, from an outputs .json (a list of runs, or
    the scheduler file's {"cases": [...]})."""
    if not json_path.exists():
        return {}
    data = json.loads(json_path.read_text())
    runs = data["cases"] if isinstance(data, dict) and "cases" in data else data
    if not isinstance(runs, list):
        return {}
    return {run["key"]: run for run in runs if isinstance(run, dict) and "key" in run}


def evaluations(run: dict | None) -> int:
    if run is None or "steps" not in run:
        return 1
    sampler = run.get("scheduler") or run.get("sampler") or ""
    return run["steps"] * (2 if sampler in SECOND_ORDER else 1)


def run_for(key: str, runs: dict[str, dict]) -> dict | None:
    """The run a tensor key belongs to: the longest run key it starts with."""
    best = None
    for run_key, run in runs.items():
        if (key == run_key or key.startswith(run_key + ".")) and (best is None or len(run_key) > len(best[0])):
            best = (run_key, run)
    return best[1] if best else None


def computed_in(run: dict | None, tensor: torch.Tensor) -> torch.dtype:
    """The dtype whose rounding a stored tensor carries: its run's, where the
    run names one; else its own when floating (f64 is an f32 schedule widened
    for storage); else f32, the harness's default (8-bit images and integer
    tensors of runs that name no dtype)."""
    named = DTYPES.get((run or {}).get("dtype") or "")
    if named is not None:
        return named
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        return tensor.dtype
    return torch.float32


def compare_tensors(path: Path, committed: Path, regenerated: Path) -> list[str]:
    old, new = load_file(committed), load_file(regenerated)
    problems = []
    if old.keys() != new.keys():
        return [f"keys differ: {sorted(old.keys() ^ new.keys())[:5]}"]
    runs = runs_of(committed.with_suffix(".json"))
    worst = 0.0
    for key in sorted(old):
        a, b = old[key], new[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{key}: {a.dtype}{list(a.shape)} became {b.dtype}{list(b.shape)}")
            continue
        if path.name == DISCONTINUOUS[0] and key.startswith(DISCONTINUOUS[1]):
            continue
        run = run_for(key, runs)
        dtype = computed_in(run, a)
        if key.endswith(".image") and a.dtype == torch.uint8:
            moved = (a.int() - b.int()).abs().max().item() if a.numel() else 0
            bound = 1 + math.floor(255 * K[dtype] * eps(dtype) * (evaluations(run) + 1))
            if moved > bound:
                problems.append(f"{key}: pixels moved by {moved} > {bound} levels")
            continue
        if not a.is_floating_point():
            if not torch.equal(a, b):
                problems.append(f"{key}: integer tensor differs")
            continue
        x, y = a.double(), b.double()
        same = (x == y) | (x.isnan() & y.isnan())
        diff = (x - y).abs().nan_to_num(math.inf, math.inf, math.inf).masked_fill(same, 0.0)
        scale = x.abs().nan_to_num(0.0, 0.0, 0.0).max().item() if x.numel() else 0.0
        bound = K[dtype] * eps(dtype) * scale * evaluations(run)
        max_abs = diff.max().item() if diff.numel() else 0.0
        if bound > 0:
            worst = max(worst, max_abs / bound)
        if max_abs > bound:
            problems.append(f"{key}: max-abs {max_abs:.3e} beyond the bound {bound:.3e}")
    print(f"  {path}: {len(old)} tensors, worst {worst:.2f} of the bound")
    return problems


def main(argv: list[str] | None = None) -> int:
    committed, regenerated = (Path(a) for a in (argv or sys.argv[1:])[:2])
    files = {p.relative_to(regenerated) for p in regenerated.rglob("*") if p.is_file()}
    files |= {p.relative_to(committed) for p in committed.rglob("*") if p.is_file()}
    failures = []
    for rel in sorted(files):
        if "__pycache__" in rel.parts:
            continue
        old, new = committed / rel, regenerated / rel
        if not old.exists() or not new.exists():
            failures.append(f"{rel}: {'new' if new.exists() else 'no longer'} written by the harness")
            continue
        if old.read_bytes() == new.read_bytes():
            continue
        if rel.parts[:2] == ("fixtures", "outputs") and rel.suffix == ".safetensors":
            failures += [f"{rel}: {p}" for p in compare_tensors(rel, old, new)]
        else:
            failures.append(f"{rel}: differs (must be byte-identical on every machine)")
    for failure in failures:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
