//! `sd convert`: weights into GGUF of a chosen type, or GGUF back into
//! safetensors (the work, and the reading of `--type`, are
//! `sd_pipeline::convert`'s, as for `sd_rs.convert`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use sd_pipeline::convert::{convert, Target};

#[derive(Args)]
pub struct ConvertArgs {
    /// A diffusers folder (its UNet), a single-file checkpoint, or a .gguf file.
    pub input: PathBuf,
    /// The file to write: .gguf, or .safetensors (values decoded).
    pub output: PathBuf,
    /// q8_0, q5_1, q5_0, q4_1, q4_0, f16, bf16 or f32: the denoiser's layer
    /// weights' type in a .gguf (default q8_0); the dtype of every float
    /// tensor in a .safetensors (f32, f16, bf16; default f32).
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Keep only the UNet / transformer, without `model.diffusion_model.`
    /// (ComfyUI-GGUF's form; run it with `--model FILE --config-dir FOLDER`).
    #[arg(long)]
    pub denoiser_only: bool,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    let target = Target::for_output(&args.output, args.kind.as_deref())?;
    let done = convert(&args.input, &args.output, target, args.denoiser_only)?;
    let size = std::fs::metadata(&args.output).map_or(0, |m| m.len());
    println!(
        "{}: {} tensors, {} quantized, {:.1} MB",
        args.output.display(),
        done.tensors,
        done.quantized,
        size as f64 / 1e6
    );
    if !done.dropped.is_empty() {
        println!("left out (integer buffers): {}", done.dropped.join(", "));
    }
    Ok(())
}
