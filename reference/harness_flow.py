"""Flow-matching scheduler traces (SD3, SD3.5, FLUX): diffusers'
FlowMatchEulerDiscreteScheduler and FlowMatchHeunDiscreteScheduler, with the
stand-in model and the record layout of harness_schedulers.py, written to
outputs/flow_schedulers.{safetensors,json}. Dynamic shifting gets `mu` from
an image size in patches as the SD3/FLUX pipelines compute it
(`calculate_shift`); the JSON records the size, which the Rust side passes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
from safetensors.torch import save_file

from harness_schedulers import SAMPLE_SEED, SHAPE, STEP_SEED, run_case

SD3 = {"num_train_timesteps": 1000, "shift": 3.0}  # SD3 / SD3.5's scheduler config
DYNAMIC = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
           "base_image_seq_len": 256, "max_image_seq_len": 4096}  # FLUX's

SAMPLERS = {"flow-euler": FlowMatchEulerDiscreteScheduler, "flow-heun": FlowMatchHeunDiscreteScheduler}


def variants(name: str):
    """(case suffix, config overrides, steps, image_seq_len or None)."""
    for steps in (1, 2, 10, 28):
        yield f"steps{steps}", {}, steps, None
    for shift in (1.0, 6.0):
        yield f"shift{shift:g}", {"shift": shift}, 10, None
    if name != "flow-euler":
        return
    yield "dynamic", DYNAMIC, 10, 1024
    yield "dynamic_linear", dict(DYNAMIC, time_shift_type="linear"), 10, 4096
    yield "shift_terminal", {"shift_terminal": 0.1}, 10, None
    yield "karras", {"use_karras_sigmas": True}, 10, None
    yield "exponential", {"use_exponential_sigmas": True}, 10, None
    yield "invert_sigmas", {"invert_sigmas": True}, 10, None
    yield "stochastic", {"stochastic_sampling": True}, 10, None
    # FLUX's pipelines pass sigmas of their own (linspace(1, 1/n, n)) with mu
    yield "flux_sigmas4", dict(DYNAMIC, _flux_sigmas=True), 4, 1024
    yield "flux_sigmas28", dict(DYNAMIC, _flux_sigmas=True), 28, 4096


def write_flow_traces(outputs: Path) -> None:
    tensors, cases = {}, []
    half = [("f16", torch.float16), ("bf16", torch.bfloat16)]
    for name, cls in SAMPLERS.items():
        runs = [(suffix, overrides, steps, seq, "f32", torch.float32)
                for suffix, overrides, steps, seq in variants(name)]
        runs += [(f"{dtype_name}.default", {}, 10, None, dtype_name, dtype) for dtype_name, dtype in half]
        for suffix, overrides, steps, seq, dtype_name, dtype in runs:
            overrides = dict(overrides)
            flux_sigmas = overrides.pop("_flux_sigmas", False)
            config = dict(SD3, **overrides)
            case = {"key": f"{name}.{suffix}", "sampler": name, "class": cls.__name__,
                    "config": config, "steps": steps, "step_kwargs": {}}
            set_kwargs = {}
            if seq is not None:
                case["image_seq_len"] = seq
                set_kwargs["mu"] = calculate_shift(seq, config["base_image_seq_len"], config["max_image_seq_len"],
                                                   config["base_shift"], config["max_shift"])
            if flux_sigmas:
                case["custom_sigmas"] = "flux"
                set_kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
            if dtype_name != "f32":
                case["dtype"] = dtype_name
            result = run_case(cls, config, steps, {}, dtype, set_kwargs)
            for key, value in result.items():
                tensors[f"{case['key']}.{key}"] = value.contiguous()
            cases.append(case)
    save_file(tensors, outputs / "flow_schedulers.safetensors")
    meta = {"sample_seed": SAMPLE_SEED, "step_seed": STEP_SEED, "shape": list(SHAPE),
            "model": "v(x) = FIXED + 0.1 * x, x = scale_model_input(sample, t)", "cases": cases}
    (outputs / "flow_schedulers.json").write_text(json.dumps(meta, indent=1) + "\n")
