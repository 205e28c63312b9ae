//! Times merging, swapping and removing LoRAs on a full-size model, as JSON
//! on stdout (docs/benchmarks.md).
//!
//! lora_timing (--model DIR | --random-sd15 DIR) [--device cpu] [--dtype f32] [--rank 32]
//!
//! Two random kohya-format LoRAs of the given rank are written next to the
//! model (every attention projection, feed-forward and proj_in/out of the
//! UNet, and every attention and MLP projection of the text encoder: the
//! modules kohya's trainer targets), then: the first merge (file read,
//! originals saved, update added), a swap to the second, and the unload.
//! `undo_bytes` is the memory kept to undo (one copy of each touched weight);
//! `rss_added_bytes` what the process grew by across the first merge.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use sd_core::DiffusersModel;
use sd_pipeline::{LoraSpec, StableDiffusion};
use tch::{Kind, Tensor};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = status
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A random kohya LoRA over the modules kohya targets, `rank` wide.
fn write_lora(pipeline: &StableDiffusion, path: &Path, rank: i64, seed: i64) -> Result<usize> {
    tch::manual_seed(seed);
    let unet_kinds = [
        ".to_q.weight",
        ".to_k.weight",
        ".to_v.weight",
        ".to_out.0.weight",
        ".ff.net.0.proj.weight",
        ".ff.net.2.weight",
        ".proj_in.weight",
        ".proj_out.weight",
    ];
    let text_kinds = [
        ".q_proj.weight",
        ".k_proj.weight",
        ".v_proj.weight",
        ".out_proj.weight",
        ".fc1.weight",
        ".fc2.weight",
    ];
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let unet = pipeline
        .unet()
        .ok_or_else(|| anyhow::anyhow!("LoRA timing needs a UNet model"))?;
    let stores = [
        ("lora_unet_", unet.var_store(), &unet_kinds[..]),
        (
            "lora_te_",
            pipeline.text_encoder().var_store(),
            &text_kinds[..],
        ),
    ];
    for (prefix, store, kinds) in stores {
        let mut names: Vec<(String, Vec<i64>)> = store
            .variables()
            .into_iter()
            .filter(|(n, _)| kinds.iter().any(|k| n.ends_with(k)))
            .map(|(n, t)| (n, t.size()))
            .collect();
        names.sort();
        for (name, shape) in names {
            let key = format!(
                "{prefix}{}",
                name.trim_end_matches(".weight").replace('.', "_")
            );
            let fan_in: i64 = shape[1..].iter().product();
            let mut down_shape = vec![rank];
            down_shape.extend_from_slice(&shape[1..]);
            let mut up_shape = vec![shape[0], rank];
            up_shape.extend(std::iter::repeat_n(1, shape.len() - 2));
            let opts = (Kind::Half, tch::Device::Cpu);
            tensors.push((
                format!("{key}.lora_down.weight"),
                Tensor::randn(&down_shape, opts) / (fan_in as f64).sqrt(),
            ));
            tensors.push((
                format!("{key}.lora_up.weight"),
                Tensor::randn(&up_shape, opts) * 0.01,
            ));
            tensors.push((format!("{key}.alpha"), Tensor::from(rank as f32 / 2.0)));
        }
    }
    let modules = tensors.len() / 3;
    Tensor::write_safetensors(&tensors, path)?;
    Ok(modules)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut model = arg(&args, "--model", "");
    let random = arg(&args, "--random-sd15", "");
    if !random.is_empty() {
        let dir = Path::new(&random);
        if !dir.join("model_index.json").exists() {
            eprintln!("writing a random-weight SD1.5 folder to {random} (it draws noise)");
            sd_train::model::write_random_sd15(dir, 0, Kind::Half)?;
        }
        model = random;
    }
    let device = sd_core::device::parse_device(&arg(&args, "--device", "cpu"))?;
    let kind = sd_core::device::parse_dtype(&arg(&args, "--dtype", "f32"))?;
    let rank: i64 = arg(&args, "--rank", "32").parse().context("--rank")?;
    let mut pipeline = StableDiffusion::builder()
        .model_dir(&model)
        .device(device)
        .dtype(kind)
        .build()?;
    let dir = std::env::temp_dir().join(format!("lora-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let modules = write_lora(&pipeline, &a, rank, 1)?;
    write_lora(&pipeline, &b, rank, 2)?;
    let file_bytes = std::fs::metadata(&a)?.len();

    let rss_before = rss_bytes();
    let started = Instant::now();
    pipeline.set_loras(&[LoraSpec::new(&a, 0.8)])?;
    let apply_s = started.elapsed().as_secs_f64();
    let rss_added = rss_bytes().saturating_sub(rss_before);
    let undo_bytes = pipeline.lora_undo_bytes();
    let started = Instant::now();
    pipeline.set_loras(&[LoraSpec::new(&b, 0.8)])?;
    let swap_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    pipeline.unload_loras()?;
    let unload_s = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "{}",
        serde_json::json!({
            "model": model, "device": format!("{device:?}"), "dtype": format!("{kind:?}"),
            "rank": rank, "modules": modules, "file_bytes": file_bytes,
            "apply_s": apply_s, "swap_s": swap_s, "unload_s": unload_s,
            "undo_bytes": undo_bytes, "rss_added_bytes": rss_added,
            "threads": tch::get_num_threads(),
        })
    );
    Ok(())
}
