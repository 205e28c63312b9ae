//! How a server is set up: where the model and data live, where it listens,
//! and the limits every request is checked against.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sd_pipeline::front::{EncoderChoice, Limits as RequestLimits, ModelSource};
use sd_pipeline::StableDiffusionBuilder;

/// Everything `sd serve` takes.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model served at start: a diffusers folder, a single file or a
    /// hub repo id.
    pub model: ModelSource,
    /// A folder of models (diffusers folders and `.safetensors` files) that
    /// `POST /sdapi/v1/options` may switch among.
    pub models_dir: Option<PathBuf>,
    /// Where `<lora:NAME:SCALE>` prompt tags find `NAME.safetensors` (the
    /// folder and its subfolders); `None`: tags are refused.
    pub lora_dir: Option<PathBuf>,
    /// Upscaler models (`.safetensors`, `.pth`) for `/sdapi/v1/upscalers` and
    /// `/sdapi/v1/extra-single-image` (the folder and its subfolders).
    pub upscalers_dir: Option<PathBuf>,
    /// The database (`history.sqlite`) and the images (`images/`).
    pub data_dir: PathBuf,
    /// Where to listen; port 0 picks a free one.
    pub address: SocketAddr,
    /// Required (as `Authorization: Bearer KEY`, or as the password of
    /// HTTP basic auth) on every route but `/healthz`.
    pub api_key: Option<String>,
    /// Origins allowed by CORS; empty: CORS off (same-origin only).
    pub cors_origins: Vec<String>,
    /// Request and queue limits.
    pub limits: Limits,
    /// Images per UNet batch when queued jobs agree in shape; 1 turns
    /// batching off.
    pub max_batch_images: usize,
    /// Device and dtype, as the CLI's `--device` / `--dtype` set them.
    pub device: tch::Device,
    /// The weights' dtype.
    pub dtype: tch::Kind,
    /// Configs and tokenizers for single-file models (`--config-dir`).
    pub config_dir: Option<PathBuf>,
    /// T5 wanted or not, and text encoders from files of their own (SD3).
    pub encoders: EncoderChoice,
    /// IP-Adapters loaded with every model, each with its image encoder
    /// folder; requests give one image prompt per adapter (`ip_adapter`).
    pub ip_adapters: Vec<(PathBuf, PathBuf)>,
    /// Where `sd compile`'s packages are kept, when the UNet runs through
    /// them (`--compiled`): a request whose size one was made for runs it.
    pub compiled: Option<PathBuf>,
}

/// What a request may ask for (past these it gets a 4xx naming the
/// field), and what the server takes on.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Size, steps, images and guidance: the request layer's limits.
    pub request: RequestLimits,
    /// Largest request body (base64 images included).
    pub max_body_bytes: usize,
    /// Jobs waiting or running; past it new jobs get 503 with Retry-After.
    pub queue_capacity: usize,
    /// A job running longer fails with "time limit".
    pub job_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request: RequestLimits::default(),
            max_body_bytes: 32 << 20,
            queue_capacity: 16,
            job_timeout: Duration::from_secs(600),
        }
    }
}

impl ServerConfig {
    /// Serves `model` on 127.0.0.1:7860 with data in `data_dir` and the
    /// default limits.
    pub fn new(model: ModelSource, data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            model,
            models_dir: None,
            lora_dir: None,
            upscalers_dir: None,
            data_dir: data_dir.into(),
            address: SocketAddr::from(([127, 0, 0, 1], 7860)),
            api_key: None,
            cors_origins: Vec::new(),
            limits: Limits::default(),
            max_batch_images: 8,
            device: tch::Device::Cpu,
            dtype: tch::Kind::Float,
            config_dir: None,
            encoders: EncoderChoice::default(),
            ip_adapters: Vec::new(),
            compiled: None,
        }
    }

    /// The pipeline builder for `model` with this config's device, dtype
    /// and text encoders (and `config_dir`, for a single file).
    pub(crate) fn builder(&self, model: &ModelSource) -> StableDiffusionBuilder {
        let builder = sd_pipeline::StableDiffusion::builder()
            .source(model)
            .device(self.device)
            .dtype(self.dtype);
        let builder = match (&self.config_dir, model) {
            (Some(dir), ModelSource::SingleFile(_)) => builder.config_dir(dir),
            _ => builder,
        };
        let adapters = self.ip_adapters.iter();
        let builder = adapters.fold(builder, |b, (path, encoder)| b.ip_adapter(path, encoder));
        self.encoders
            .apply(builder.compiled_in(self.compiled.clone()))
    }
}

/// The default `--data` folder: `$XDG_DATA_HOME/sd-rs/server`, else
/// `~/.local/share/sd-rs/server`.
pub fn default_data_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let base = match (var("XDG_DATA_HOME"), var("HOME")) {
        (Some(data), _) => PathBuf::from(data),
        (None, Some(home)) => PathBuf::from(home).join(".local/share"),
        (None, None) => std::env::temp_dir(),
    };
    base.join("sd-rs/server")
}
