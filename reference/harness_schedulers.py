"""Scheduler traces: timesteps, sigmas and a whole denoising run per sampler and config.

The stand-in model is `eps(x) = FIXED + 0.1 * x` where `x` is the output of
`scale_model_input` and FIXED a seeded tensor, so scaling bugs show in the trace.
Stochastic samplers get a CPU generator seeded with STEP_SEED, passed to every
`step` call (the order in which diffusers draws noise).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler, HeunDiscreteScheduler, KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler,
    LCMScheduler, LMSDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler,
)

SAMPLE_SEED = 7
STEP_SEED = 8
SHAPE = (1, 4, 4, 4)

BASE = {  # SD1.5's scheduler config
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "steps_offset": 1, "set_alpha_to_one": False,
    "clip_sample": False, "skip_prk_steps": True,
}

# CLI name -> (class, config overrides that define the sampler)
SAMPLERS = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm2": (KDPM2DiscreteScheduler, {}),
    "dpm2-a": (KDPM2AncestralDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m-karras": (DPMSolverMultistepScheduler,
                       {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "dpm++2m-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}

ZERO_SNR = {"ddim", "ddpm", "euler", "euler-a", "dpm++2m", "dpm++2m-sde", "unipc", "lcm"}
KARRAS = {"lms", "euler", "heun", "dpm2", "dpm2-a", "dpm++2m", "dpm++2m-sde", "unipc"}


def variants(name: str):
    """(case suffix, config overrides, steps, step kwargs)."""
    for steps in (1, 2, 10, 25, 50):
        yield f"steps{steps}", {}, steps, {}
    for prediction in ("v_prediction", "sample"):
        yield prediction, {"prediction_type": prediction}, 10, {}
    for spacing in ("leading", "trailing", "linspace"):
        yield spacing, {"timestep_spacing": spacing}, 10, {}
    for schedule in ("linear", "squaredcos_cap_v2"):
        yield schedule, {"beta_schedule": schedule}, 10, {}
    if name in KARRAS and "karras" not in name:
        yield "karras", {"use_karras_sigmas": True}, 10, {}
    if name in KARRAS:
        yield "exponential", {"use_exponential_sigmas": True}, 10, {}
    if name in ZERO_SNR:
        yield "zero_snr", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, 10, {}
        yield "zero_snr_v", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                             "prediction_type": "v_prediction"}, 25, {}
    if name == "ddim":
        yield "eta1", {}, 10, {"eta": 1.0}
        yield "set_alpha_to_one", {"set_alpha_to_one": True}, 10, {}
    if name in ("ddim", "ddpm"):
        yield "clip_sample", {"clip_sample": True, "clip_sample_range": 1.0}, 10, {}


def run_case(cls, config: dict, steps: int, step_kwargs: dict, dtype: torch.dtype = torch.float32,
             set_kwargs: dict | None = None) -> dict:
    """A whole run with the stand-in model; in half precision the sample, the model
    output and add_noise's inputs are drawn in that dtype, as a pipeline does.
    `set_kwargs` go to set_timesteps (flow matching's `mu`)."""
    set_kwargs = set_kwargs or {}
    scheduler = cls.from_config(config)
    scheduler.set_timesteps(steps, **set_kwargs)
    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    # (flow-matching schedulers have neither init_noise_sigma nor scale_model_input)
    init_noise_sigma = getattr(scheduler, "init_noise_sigma", 1.0)
    sample = torch.randn(SHAPE, generator=gen, dtype=dtype) * init_noise_sigma
    fixed = torch.randn(SHAPE, generator=gen, dtype=dtype)
    step_gen = torch.Generator().manual_seed(STEP_SEED)
    timesteps = scheduler.timesteps.clone()
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs = dict(step_kwargs, generator=step_gen)
    samples, inputs = [sample], []
    for t in timesteps:
        x = scheduler.scale_model_input(sample, t) if hasattr(scheduler, "scale_model_input") else sample
        inputs.append(x)
        out = scheduler.step(fixed + 0.1 * x, t, sample, **step_kwargs)
        sample = out.prev_sample
        samples.append(sample)
    result = {
        "timesteps": timesteps.to(torch.float64),
        "trace": torch.stack(samples),
        "model_inputs": torch.stack(inputs),
        "init_noise_sigma": torch.tensor(float(init_noise_sigma), dtype=torch.float64),
    }
    if getattr(scheduler, "sigmas", None) is not None:
        result["sigmas"] = scheduler.sigmas.to(torch.float64)
    # add_noise at the third timestep (img2img's entry point), from a fresh scheduler.
    fresh = cls.from_config(config)
    fresh.set_timesteps(steps, **set_kwargs)
    if len(fresh.timesteps) > 2:
        original = torch.randn(SHAPE, generator=gen, dtype=dtype)
        noise = torch.randn(SHAPE, generator=gen, dtype=dtype)
        t = fresh.timesteps[2:3]
        if hasattr(fresh, "set_begin_index"):
            fresh.set_begin_index(2)
        result["add_noise.original"] = original
        result["add_noise.noise"] = noise
        if hasattr(fresh, "scale_noise"):  # flow matching's forward process
            result["add_noise.noisy"] = fresh.scale_noise(original, t, noise)
        else:
            result["add_noise.noisy"] = fresh.add_noise(original, noise, t)
    return result


def write_traces(outputs: Path) -> None:
    tensors, cases = {}, []
    half = [("f16", torch.float16), ("bf16", torch.bfloat16)]
    for name, (cls, defining) in SAMPLERS.items():
        # every variant in f32; in f16 and bf16 the default and v-prediction, 10 steps
        runs = [(suffix, overrides, steps, kwargs, "f32", torch.float32)
                for suffix, overrides, steps, kwargs in variants(name)]
        runs += [(f"{dtype_name}.{suffix}", overrides, 10, {}, dtype_name, dtype)
                 for dtype_name, dtype in half
                 for suffix, overrides in [("default", {}), ("v_prediction", {"prediction_type": "v_prediction"})]]
        for suffix, overrides, steps, step_kwargs, dtype_name, dtype in runs:
            config = dict(BASE, **defining, **overrides)
            case = {"key": f"{name}.{suffix}", "sampler": name, "class": cls.__name__,
                    "config": config, "steps": steps, "step_kwargs": step_kwargs}
            if dtype_name != "f32":
                case["dtype"] = dtype_name
            try:
                result = run_case(cls, config, steps, step_kwargs, dtype)
            except Exception as error:  # recorded: the Rust side must reject it too
                case["error"] = f"{type(error).__name__}: {error}"
            else:
                for key, value in result.items():
                    tensors[f"{case['key']}.{key}"] = value.contiguous()
            cases.append(case)
    from safetensors.torch import save_file
    save_file(tensors, outputs / "schedulers.safetensors")
    meta = {"sample_seed": SAMPLE_SEED, "step_seed": STEP_SEED, "shape": list(SHAPE),
            "model": "eps(x) = FIXED + 0.1 * x, x = scale_model_input(sample, t)", "cases": cases}
    (outputs / "schedulers.json").write_text(json.dumps(meta, indent=1) + "\n")
