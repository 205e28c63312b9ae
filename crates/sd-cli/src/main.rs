//! `sd`: the command line tool: txt2img, img2img, inpaint, preprocess, train,
//! serve, eval-shapes, tokenize, doctor.

mod compile;
mod control;
mod convert;
mod encoders;
mod generate;
mod hires;
mod ip_adapter;
mod options;
mod output;
mod preprocess;
mod preview;
mod serve;
mod shapes;
mod train;
mod upscale;

use anyhow::Result;
use clap::{Parser, Subcommand};
use generate::{Common, ImageInput, Mode};

#[derive(Parser)]
#[command(name = "sd", version, about = "Stable Diffusion in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt.
    Txt2img {
        #[command(flatten)]
        common: Common,
    },
    /// Generate from a prompt and a starting image.
    Img2img {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        input: ImageInput,
        /// How much of the schedule to run, in (0, 1].
        #[arg(long, default_value_t = 0.8)]
        strength: f64,
    },
    /// Repaint the white part of a mask.
    Inpaint {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        input: ImageInput,
        /// Mask image of the same size: white is repainted.
        #[arg(long)]
        mask: std::path::PathBuf,
        #[arg(long, default_value_t = 1.0)]
        strength: f64,
    },
    /// Print a prompt's token ids as a JSON array (BOS, tokens, EOS, padding to 77).
    Tokenize {
        /// A diffusers model folder (its tokenizer/ is used).
        #[arg(long)]
        model: std::path::PathBuf,
        /// Use tokenizer_2/ (SDXL's OpenCLIP tokenizer).
        #[arg(long)]
        tokenizer_2: bool,
        /// Print only BOS, the tokens and EOS (no padding, no truncation).
        #[arg(long)]
        no_padding: bool,
        prompt: String,
    },
    /// Train the shapes model from scratch, or fine-tune a model on your images.
    Train {
        #[command(flatten)]
        args: train::TrainArgs,
    },
    /// Score a shapes model's prompt adherence (colour and shape accuracy).
    EvalShapes {
        #[arg(long)]
        model: std::path::PathBuf,
        #[arg(long, default_value_t = 4)]
        seeds: u64,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 7.5)]
        guidance: f64,
    },
    /// Make control images for ControlNets: canny edges, grayscale, invert, resize.
    Preprocess {
        #[command(subcommand)]
        command: preprocess::Preprocess,
    },
    /// Serve the model over HTTP: AUTOMATIC1111's API, a job queue, history, a web page.
    Serve {
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// Convert weights: into GGUF of a chosen type (q8_0, q4_0, ...), or GGUF back into safetensors.
    Convert {
        #[command(flatten)]
        args: convert::ConvertArgs,
    },
    /// Compile a model's UNet and VAE decoder with torch's compiler (AOTInductor), for --compiled.
    Compile {
        #[command(flatten)]
        args: compile::CompileArgs,
    },
    /// Enlarge an image with an upscaler model (ESRGAN, Real-ESRGAN; .safetensors or .pth).
    Upscale {
        #[command(flatten)]
        args: upscale::UpscaleArgs,
    },
    /// Print what this build of libtorch can use (CPU threads, CUDA devices, cuDNN).
    Doctor {
        /// Also run a small convolution and attention on this device (cpu, cuda, cuda:N).
        #[arg(long)]
        device: Option<String>,
    },
}

/// When `main` began, for `--timings`.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// `--timings`: one stderr line per milestone, seconds since `main` began
/// and the wall clock (so a harness can line it up with its own clock).
pub(crate) fn timing(what: &str) {
    let since = STARTED.get_or_init(std::time::Instant::now).elapsed();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "timing: {what} at {:.3} s (unix {:.3})",
        since.as_secs_f64(),
        unix.as_secs_f64()
    );
}

/// Errors print as one line (the library errors already carry their cause).
fn main() -> std::process::ExitCode {
    STARTED.get_or_init(std::time::Instant::now);
    sd_core::alloc::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Doctor { device } => doctor(device.as_deref()),
        Command::Train { args } => train::run(&args),
        Command::Convert { args } => convert::run(&args),
        Command::Upscale { args } => upscale::run(&args),
        Command::Compile { args } => compile::run(&args),
        Command::Serve { args } => serve::run(&args),
        Command::Preprocess { command } => preprocess::run(&command),
        Command::EvalShapes {
            model,
            seeds,
            steps,
            guidance,
        } => {
            let pipeline = sd_pipeline::StableDiffusion::builder()
                .model_dir(&model)
                .build()?;
            let report = sd_train::eval::evaluate(&pipeline, seeds, steps, guidance)?;
            println!("{report}");
            Ok(())
        }
        Command::Txt2img { common } => generate::run(&common, Mode::Txt2Img),
        Command::Img2img {
            common,
            input,
            strength,
        } => generate::run(
            &common,
            Mode::Img2Img {
                image: input.init_image,
                strength,
            },
        ),
        Command::Inpaint {
            common,
            input,
            mask,
            strength,
        } => generate::run(
            &common,
            Mode::Inpaint {
                image: input.init_image,
                mask,
                strength,
            },
        ),
        Command::Tokenize {
            model,
            tokenizer_2,
            no_padding,
            prompt,
        } => tokenize(&model, tokenizer_2, no_padding, &prompt),
    }
}

fn tokenize(model: &std::path::Path, second: bool, no_padding: bool, prompt: &str) -> Result<()> {
    let folder = model.join(if second { "tokenizer_2" } else { "tokenizer" });
    let tokenizer = sd_clip::ClipTokenizer::from_folder(&folder)?;
    let ids = if no_padding {
        tokenizer.encode_full(prompt)?
    } else {
        let encoded = tokenizer.encode(prompt)?;
        if encoded.dropped > 0 {
            eprintln!(
                "warning: {} tokens beyond the {}-token context were dropped",
                encoded.dropped,
                tokenizer.max_length()
            );
        }
        encoded.ids
    };
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn doctor(device: Option<&str>) -> Result<()> {
    println!("cpu threads: {}", tch::get_num_threads());
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    println!(
        "cuda graphs (--cuda-graphs) and peak-memory counters: {}",
        if sd_core::ffi::cuda_graph::available() {
            "available"
        } else if tch::Cuda::is_available() {
            "not built (the libtorch wheel lacked the CUDA headers)"
        } else {
            "no CUDA device"
        }
    );
    if let Some(text) = device {
        let device = sd_core::device::parse_device(text)?;
        let x = tch::Tensor::randn([1, 4, 64, 64], (tch::Kind::Float, device));
        let w = tch::Tensor::randn([8, 4, 3, 3], (tch::Kind::Float, device));
        let conv = x.f_conv2d(&w, None::<tch::Tensor>, [1, 1], [1, 1], [1, 1], 1)?;
        let q = conv
            .f_view([1, 8, 64 * 64])?
            .f_transpose(1, 2)?
            .f_unsqueeze(1)?;
        let attn = tch::Tensor::f_scaled_dot_product_attention(
            &q,
            &q,
            &q,
            None::<tch::Tensor>,
            0.0,
            false,
            None,
            false,
        )?;
        println!(
            "ran conv2d + attention on {text}: output {:?} on {:?}",
            attn.size(),
            attn.device()
        );
    }
    Ok(())
}
