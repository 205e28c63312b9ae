//! Times one pipeline run per component, as JSON on stdout (used by
//! benches/side_by_side.py, which runs diffusers on the same folder).
//!
//! pipeline_timing --model DIR [--device cpu] [--dtype f32] [--size 256] [--steps 4] [--batch 1] [--runs 2] [--cuda-graphs]

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
    let model = arg(&args, "--model", "");
    let device = sd_core::device::parse_device(&arg(&args, "--device", "cpu"))?;
    let kind = sd_core::device::parse_kind(&arg(&args, "--dtype", "f32"))?;
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
    let pipeline = StableDiffusion::builder()
        .model_dir(&model)
        .device(device)
        .dtype(kind)
        .build()?;
    let load = started.elapsed().as_secs_f64();
    let _guard = tch::no_grad_guard();
    let mut results = Vec::new();
    for run in 0..runs {
        let mut request = Request::new("a photo of an astronaut riding a horse on the moon");
        request.width = Some(size);
        request.height = Some(size);
        request.steps = steps;
        request.num_images = batch;
        request.seed = run as u64;
        // 1. text encoding alone
        let t0 = Instant::now();
        let embeddings = pipeline.encode_prompts(&request, true)?;
        sync(device);
        let text = t0.elapsed().as_secs_f64();
        request.embeddings = Some(embeddings);
        // 2. the loop (UNet + scheduler), then decode and RGB conversion
        let mut last = Instant::now();
        let t1 = Instant::now();
        let scheduler = pipeline.scheduler_for(&request)?;
        pipeline.generate_with(&request, scheduler, &mut |_| {
            sync(device);
            last = Instant::now();
            ControlFlow::Continue(())
        })?;
        sync(device);
        let total = t1.elapsed().as_secs_f64();
        let denoise = (last - t1).as_secs_f64();
        results.push(serde_json::json!({
            "text_encode_s": text, "denoise_s": denoise, "unet_step_s": denoise / steps as f64,
            "vae_decode_s": total - denoise, "end_to_end_s": total + text,
        }));
    }
    println!(
        "{}",
        serde_json::json!({"library": "sd-rs", "load_s": load, "runs": results})
    );
    Ok(())
}
