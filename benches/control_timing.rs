//! ControlNet cost per denoising step, and the tiny autoencoder against the
//! full VAE, on full-size architectures with random weights, as JSON on
//! stdout (docs/benchmarks.md). Random weights: the outputs are noise; only
//! the time and memory mean anything.
//!
//! control_timing step --model DIR [--size 256] [--runs 3] [--device cpu]
//!     One CFG-batched UNet step eagerly with no ControlNet, one, and two
//!     (ControlNets of the model's own UNet config, random weights).
//! control_timing decode --model DIR --vae full|tiny [--size 512] [--runs 3]
//!     One decode of (1, 4, size/8, size/8) latents by the model's VAE or by
//!     a random TAESD (the release architecture); run each in its own
//!     process: `peak_rss_bytes` is the process's peak.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use sd_controlnet::{ControlFields, ControlNetConfig, ControlNetModel, ControlScale};
use sd_core::DiffusersModel;
use sd_unet::{ControlResiduals, UNet2DConditionModel};
use sd_vae::{AutoencoderKL, AutoencoderTiny, TinyVaeConfig};
use tch::{Device, Kind, Tensor};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn randomize(vs: &tch::nn::VarStore, seed: i64) {
    tch::manual_seed(seed);
    let _guard = tch::no_grad_guard();
    for (_, mut v) in vs.variables() {
        let fresh = Tensor::randn(v.size(), (Kind::Float, v.device())) * 0.02;
        v.copy_(&fresh);
    }
}

/// Best wall time of `runs` calls of `f`, in seconds.
fn best(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let started = Instant::now();
        f()?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn step(model: &Path, size: i64, runs: usize, device: Device) -> Result<serde_json::Value> {
    let _guard = tch::no_grad_guard();
    let unet = UNet2DConditionModel::from_folder(model.join("unet"), device, Kind::Float, None)?;
    let config = ControlNetConfig::from_unet(unet.config(), ControlFields::default());
    let nets: Vec<ControlNetModel> = (0..2)
        .map(|i| -> Result<ControlNetModel> {
            let net = ControlNetModel::new_in(&config, device, Kind::Float)?;
            randomize(net.var_store(), 7 + i);
            Ok(net)
        })
        .collect::<Result<_>>()?;
    let latent = size / 8;
    let sample = Tensor::randn([2, 4, latent, latent], (Kind::Float, device));
    let width = config.cross_attention_dim()?;
    let context = Tensor::randn([2, 77, width], (Kind::Float, device));
    let image = Tensor::rand([2, 3, size, size], (Kind::Float, device));
    let t = Tensor::from(500i64).to_device(device);
    let scale = ControlScale {
        scale: 1.0,
        guess_mode: false,
    };
    let with = |n: usize| -> Result<f64> {
        best(runs, || {
            let mut sum: Option<ControlResiduals> = None;
            for net in &nets[..n] {
                let r = net.forward(&sample, &t, &context, None, &image, scale)?;
                sum = Some(match sum {
                    None => r,
                    Some(s) => s.plus(&r),
                });
            }
            let out = unet.forward_controlled(&sample, &t, &context, None, sum.as_ref())?;
            let _ = out.sum(Kind::Float).double_value(&[]);
            Ok(())
        })
    };
    let (none, one, two) = (with(0)?, with(1)?, with(2)?);
    Ok(serde_json::json!({
        "size": size, "batch": 2, "runs": runs,
        "unet_step_s": none, "with_one_controlnet_s": one, "with_two_controlnets_s": two,
        "controlnet_params": nets[0].var_store().variables().values().map(|v| v.numel()).sum::<usize>(),
    }))
}

fn decode(
    model: &Path,
    which: &str,
    size: i64,
    runs: usize,
    device: Device,
) -> Result<serde_json::Value> {
    let _guard = tch::no_grad_guard();
    let latents = Tensor::randn([1, 4, size / 8, size / 8], (Kind::Float, device));
    let before = peak_rss_bytes();
    let (seconds, loaded) = match which {
        "full" => {
            let vae = AutoencoderKL::from_folder(model.join("vae"), device, Kind::Float, None)?;
            let loaded = peak_rss_bytes();
            (
                best(runs, || vae.decode(&latents).map(drop).map_err(Into::into))?,
                loaded,
            )
        }
        "tiny" => {
            let vae = AutoencoderTiny::new_in(&TinyVaeConfig::default(), device, Kind::Float)?;
            randomize(vae.var_store(), 3);
            let loaded = peak_rss_bytes();
            (
                best(runs, || vae.decode(&latents).map(drop).map_err(Into::into))?,
                loaded,
            )
        }
        other => bail!("--vae {other}: full or tiny"),
    };
    Ok(serde_json::json!({
        "vae": which, "size": size, "runs": runs, "decode_s": seconds,
        "rss_before_load_bytes": before, "peak_after_load_bytes": loaded,
        "peak_rss_bytes": peak_rss_bytes(),
    }))
}

fn main() -> Result<()> {
    sd_core::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(arg(&args, "--model", ""));
    let runs: usize = arg(&args, "--runs", "3").parse()?;
    let device = sd_core::device::parse_device(&arg(&args, "--device", "cpu"))?;
    let report = match args.get(1).map(String::as_str) {
        Some("step") => step(&model, arg(&args, "--size", "256").parse()?, runs, device)?,
        Some("decode") => decode(
            &model,
            &arg(&args, "--vae", "full"),
            arg(&args, "--size", "512").parse()?,
            runs,
            device,
        )?,
        _ => bail!("usage: control_timing step|decode --model DIR ..."),
    };
    println!("{report}");
    Ok(())
}
