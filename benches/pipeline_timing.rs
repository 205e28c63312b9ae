//! Times one pipeline run per component, as JSON on stdout (used by
//! benches/side_by_side.py, which runs diffusers on the same folder).
//!
//! pipeline_timing (--model DIR | --random-sd15 DIR) [--device cpu] [--dtype f32] [--size 256]
//!     [--steps 4] [--batch 1] [--runs 2] [--sampler NAME] [--cuda-graphs] [--low-memory]
//!     [--vae-tiling] [--channels-last] [--ip-adapter FILE --image-encoder DIR --ip-image PNG]
//!
//! `--compiled [--parts unet,vae-decoder]`: the parts (default both)
//! compiled first (`compile`, the default
//! Python and cache; `compile_s` and `package_mib` in the output), the runs
//! through them.
//!
//! With an IP-Adapter, `image_prompt_s` is the image encoding and projection
//! alone (`encode_image_prompts`), and every run carries the image prompt.
//!
//! `unet_step_s` is the loop time over the number of loop iterations (UNet
//! calls: PNDM makes steps + 1), as side_by_side.py counts for diffusers.
//!
//! `--random-sd15 DIR` first writes a seeded random-weight SD1.5 folder to DIR
//! (f16, about 2 GB) unless one is there: no Python or real weights needed.
//! On CUDA the output also has the allocator's peak memory since loading.

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{Context, Result};
use sd_pipeline::{Request, StableDiffusion};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--default-allocator") {
        sd_core::alloc::keep_freed_memory();
    }
    let flag = |name: &str| args.iter().any(|a| a == name);
    let mut model = arg(&args, "--model", "");
    let random = arg(&args, "--random-sd15", "");
    if !random.is_empty() {
        let dir = std::path::Path::new(&random);
        if !dir.join("model_index.json").exists() {
            eprintln!("writing a random-weight SD1.5 folder to {random} (it draws noise)");
            sd_train::model::write_random_sd15(dir, 0, tch::Kind::Half)?;
        }
        model = random;
    }
    let device = sd_core::device::parse_device(&arg(&args, "--device", "cpu"))?;
    let kind = sd_core::device::parse_dtype(&arg(&args, "--dtype", "f32"))?;
    let size: u32 = arg(&args, "--size", "256").parse().context("--size")?;
    let steps: usize = arg(&args, "--steps", "4").parse().context("--steps")?;
    let batch: usize = arg(&args, "--batch", "1").parse().context("--batch")?;
    let runs: usize = arg(&args, "--runs", "2").parse().context("--runs")?;
    if device == tch::Device::Cpu {
        tch::Cuda::cudnn_set_benchmark(false);
    } else {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let started = Instant::now();
    let mut builder = StableDiffusion::builder();
    let sampler = arg(&args, "--sampler", "");
    if !sampler.is_empty() {
        builder = builder.sampler(sampler.parse().map_err(anyhow::Error::msg)?);
    }
    let pipeline = builder
        .model_dir(&model)
        .device(device)
        .dtype(kind)
        .cuda_graphs(flag("--cuda-graphs"))
        .low_memory(flag("--low-memory"))
        .vae_tiling(flag("--vae-tiling"))
        .channels_last(flag("--channels-last"))
        .build()?;
    let mut pipeline = pipeline;
    let mut compile = serde_json::json!(null);
    if flag("--compiled") {
        use sd_pipeline::compiled::{default_cache_dir, default_python, CompileSpec, Part};
        let mut spec = CompileSpec::new(size, size, default_python(), default_cache_dir());
        spec.images = batch;
        spec.parts = match arg(&args, "--parts", "").as_str() {
            "" => Part::ALL.to_vec(),
            parts => parts
                .split(',')
                .map(str::parse)
                .collect::<Result<_, String>>()
                .map_err(anyhow::Error::msg)?,
        };
        let t = Instant::now();
        let packages = pipeline.compile(&spec, &mut |stage| eprintln!("{stage}"))?;
        let bytes: u64 = packages
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        let mib = bytes as f64 / (1 << 20) as f64;
        compile = serde_json::json!({"compile_s": t.elapsed().as_secs_f64(), "package_mib": mib});
    }
    let ip_adapter = arg(&args, "--ip-adapter", "");
    let mut prompts = Vec::new();
    if !ip_adapter.is_empty() {
        pipeline.load_ip_adapter(&ip_adapter, arg(&args, "--image-encoder", ""))?;
        let image = image::open(arg(&args, "--ip-image", "")).context("--ip-image")?;
        prompts.push(sd_pipeline::ImagePrompt::new(vec![image.to_rgb8()]));
    }
    let load = started.elapsed().as_secs_f64();
    let cuda = match device {
        tch::Device::Cuda(i) => Some(i),
        _ => None,
    };
    if let Some(i) = cuda {
        sd_core::ffi::cuda_memory::reset_peak(i)?;
    }
    let _guard = tch::no_grad_guard();
    let mut results = Vec::new();
    for run in 0..runs {
        let mut request = Request::new("a photo of an astronaut riding a horse on the moon");
        request.width = Some(size);
        request.height = Some(size);
        request.steps = steps;
        request.num_images = batch;
        request.seed = (run as u64).into();
        // 1. text encoding alone
        let t0 = Instant::now();
        let embeddings = pipeline.encode_prompts(&request, true)?;
        sync(device);
        let text = t0.elapsed().as_secs_f64();
        request.embeddings = Some(embeddings);
        let t_image = Instant::now();
        let cfg = (batch as i64, true);
        drop(pipeline.encode_image_prompts(&prompts, cfg, device)?);
        sync(device);
        let image_prompt = t_image.elapsed().as_secs_f64();
        request.image_prompts = prompts.clone();
        // 2. the loop (UNet + scheduler), then decode and RGB conversion
        let mut last = Instant::now();
        let mut first: Option<Instant> = None;
        let mut calls = 0usize;
        let t1 = Instant::now();
        let scheduler = pipeline.scheduler_for(&request)?;
        let generation = pipeline.generate_with(&request, scheduler, &mut |info| {
            // Only the last step waits for the device, so the loop keeps
            // queueing work ahead as it would without timing.
            if info.step + 1 == info.total {
                sync(device);
            }
            last = Instant::now();
            first.get_or_insert(last);
            calls += 1;
            ControlFlow::Continue(())
        })?;
        sync(device);
        let total = t1.elapsed().as_secs_f64();
        let denoise = (last - t1).as_secs_f64();
        results.push(serde_json::json!({
            "text_encode_s": text, "image_prompt_s": image_prompt, "denoise_s": denoise,
            "step_after_first_s": first.map_or(0.0, |f| (last - f).as_secs_f64() / (calls.max(2) - 1) as f64), "unet_step_s": denoise / calls.max(1) as f64, "unet_calls": calls,
            "unet_execution": format!("{:?}", generation.unet_execution),
            "decode_execution": format!("{:?}", generation.decode_execution),
            "vae_decode_s": total - denoise, "end_to_end_s": total + text,
        }));
    }
    let best_step = results
        .iter()
        .filter_map(|r| r["unet_step_s"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let mut out = serde_json::json!({
        "library": "sd-rs", "load_s": load, "runs": results, "compile": compile,
        "steps_per_s": 1.0 / best_step,
        "settings": args[1..].join(" "),
    });
    if let Some(i) = cuda {
        let peak = sd_core::ffi::cuda_memory::peak(i)?;
        out["peak_memory_gib"] = (peak.allocated as f64 / (1u64 << 30) as f64).into();
        out["peak_reserved_gib"] = (peak.reserved as f64 / (1u64 << 30) as f64).into();
    }
    println!("{out}");
    Ok(())
}
