//! `sd serve`: the HTTP server (crates/sd-server) with AUTOMATIC1111's API,
//! a job queue, history in SQLite and a web page.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sd_pipeline::front::ModelSource;
use sd_server::{Limits, Server, ServerConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A diffusers folder or a single file; default: the built-in shapes model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Models that POST /sdapi/v1/options may switch to (diffusers folders
    /// and .safetensors files directly inside).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Where <lora:NAME:SCALE> prompt tags find NAME.safetensors (the folder
    /// and its subfolders); also listed by /sdapi/v1/loras.
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Upscaler models (.safetensors, .pth: ESRGAN, Real-ESRGAN) for
    /// /sdapi/v1/upscalers and /sdapi/v1/extra-single-image (the folder and
    /// its subfolders).
    #[arg(long, value_name = "DIR")]
    pub upscalers_dir: Option<PathBuf>,
    /// Any address but a loopback one needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// The history database and the images; default:
    /// $XDG_DATA_HOME/sd-rs/server (~/.local/share/sd-rs/server).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Required on every route but /healthz (Bearer token, or the password
    /// of HTTP basic auth); also read from SD_API_KEY.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Allow cross-origin requests from this origin (repeatable); none: CORS off.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Jobs waiting or running before new ones get 503.
    #[arg(long, default_value_t = 16)]
    pub queue_size: usize,
    /// Images per UNet batch when queued txt2img jobs agree in size, steps,
    /// sampler and guidance; 1 turns batching off.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Seconds a job may run.
    #[arg(long, default_value_t = 600)]
    pub job_timeout: u64,
    #[arg(long, default_value_t = 150)]
    pub max_steps: usize,
    /// Largest width and height.
    #[arg(long, default_value_t = 2048)]
    pub max_size: u32,
    /// Most images per request (batch_size x n_iter).
    #[arg(long, default_value_t = 16)]
    pub max_images: usize,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Configs and tokenizers for single-file models (a diffusers folder of
    /// the same family); SD3 single files need it for T5's tokenizer.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(flatten)]
    pub encoders: crate::encoders::EncoderArgs,
    /// An IP-Adapter file loaded with the model (repeatable); requests give
    /// each an image prompt in their `ip_adapter` field (docs/server.md).
    #[arg(long = "ip-adapter", value_name = "FILE")]
    pub ip_adapters: Vec<PathBuf>,
    /// The image encoder folder of the IP-Adapters: once for all, or once
    /// per --ip-adapter in their order.
    #[arg(long = "image-encoder", value_name = "DIR")]
    pub image_encoders: Vec<PathBuf>,
    /// Run the UNet and VAE decoder through the packages `sd compile` made
    /// for the model (every size kept; other sizes run eager).
    #[arg(long)]
    pub compiled: bool,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let model = match &args.model {
        Some(model) => ModelSource::detect(&model.to_string_lossy())?,
        None => ModelSource::Folder(crate::shapes::folder()?),
    };
    let data = args
        .data
        .clone()
        .unwrap_or_else(sd_server::default_data_dir);
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("SD_API_KEY").ok().filter(|k| !k.is_empty()));
    let config = ServerConfig {
        models_dir: args.models_dir.clone(),
        lora_dir: args.lora_dir.clone(),
        upscalers_dir: args.upscalers_dir.clone(),
        address: SocketAddr::new(args.host, args.port),
        api_key,
        cors_origins: args.cors_origins.clone(),
        limits: Limits {
            request: request_limits(args),
            max_body_bytes: args.max_body_mb << 20,
            queue_capacity: args.queue_size,
            job_timeout: Duration::from_secs(args.job_timeout),
        },
        max_batch_images: args.max_batch,
        device: sd_core::device::parse_device(&args.device)?,
        dtype: sd_core::device::parse_dtype(&args.dtype)?,
        config_dir: args.config_dir.clone(),
        encoders: args.encoders.choice()?,
        ip_adapters: ip_adapters(args)?,
        compiled: args.compiled.then(sd_pipeline::compiled::default_cache_dir),
        ..ServerConfig::new(model.clone(), &data)
    };
    let server = Server::start(config).context("sd serve")?;
    if server.recovered_jobs > 0 {
        eprintln!(
            "note: {} job(s) were unfinished when the server last stopped; marked failed",
            server.recovered_jobs
        );
    }
    println!(
        "listening on http://{} (model {}, data {})",
        server.local_addr(),
        model.name(),
        data.display()
    );
    std::io::stdout().flush()?;
    server.run_until_ctrl_c().context("sd serve")?;
    Ok(())
}

/// The request layer's limits from --max-size, --max-steps, --max-images.
fn request_limits(args: &ServeArgs) -> sd_pipeline::front::Limits {
    let mut limits = sd_pipeline::front::Limits::default();
    limits.max_size = args.max_size;
    limits.max_steps = args.max_steps;
    limits.max_images = args.max_images;
    limits
}

/// Each `--ip-adapter` with its `--image-encoder` (one for all, or one each).
fn ip_adapters(args: &ServeArgs) -> Result<Vec<(PathBuf, PathBuf)>> {
    let encoders =
        crate::ip_adapter::encoder_of_each(args.ip_adapters.len(), &args.image_encoders)?;
    Ok(args.ip_adapters.iter().cloned().zip(encoders).collect())
}
