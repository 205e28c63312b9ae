//! `sd convert`: weights into GGUF of a chosen type, or GGUF back into
//! safetensors (the work is `sd_pipeline::convert`'s).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use sd_gguf::GgmlType;
use sd_pipeline::convert::{convert, Target};
use tch::Kind;

/// The type the weights are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(non_camel_case_types)] // ggml's names
pub enum WeightType {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q4_0")]
    Q4_0,
    F16,
    Bf16,
    F32,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// A diffusers folder (its UNet), a single-file checkpoint, or a .gguf file.
    pub input: PathBuf,
    /// The file to write: .gguf, or .safetensors (values decoded).
    pub output: PathBuf,
    /// The denoiser's layer weights' type in a .gguf (default q8_0); the
    /// dtype of every float tensor in a .safetensors (f32, f16, bf16; default f32).
    #[arg(long = "type", value_enum)]
    pub kind: Option<WeightType>,
    /// Keep only the UNet / transformer, without `model.diffusion_model.`
    /// (ComfyUI-GGUF's form; run it with `--model FILE --config-dir FOLDER`).
    #[arg(long)]
    pub denoiser_only: bool,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    let extension = args.output.extension().and_then(|e| e.to_str());
    let target = match (extension, args.kind) {
        (Some("gguf"), kind) => Target::Gguf(match kind.unwrap_or(WeightType::Q8_0) {
            WeightType::Q8_0 => GgmlType::Q8_0,
            WeightType::Q5_1 => GgmlType::Q5_1,
            WeightType::Q5_0 => GgmlType::Q5_0,
            WeightType::Q4_1 => GgmlType::Q4_1,
            WeightType::Q4_0 => GgmlType::Q4_0,
            WeightType::F16 => GgmlType::F16,
            WeightType::Bf16 => GgmlType::BF16,
            WeightType::F32 => GgmlType::F32,
        }),
        (Some("safetensors"), kind) => Target::SafeTensors(match kind.unwrap_or(WeightType::F32) {
            WeightType::F32 => Kind::Float,
            WeightType::F16 => Kind::Half,
            WeightType::Bf16 => Kind::BFloat16,
            other => bail!("--type {other:?}: a .safetensors file holds f32, f16 or bf16 values"),
        }),
        _ => bail!(
            "{}: name the output .gguf or .safetensors",
            args.output.display()
        ),
    };
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
