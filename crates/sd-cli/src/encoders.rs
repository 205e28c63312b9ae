//! `--t5`, `--clip-l`, `--clip-g`, `--vae`: the options for parts in files
//! of their own that `sd txt2img` (and img2img, inpaint) and `sd serve` share.

use std::path::PathBuf;

use clap::Args;
use sd_pipeline::front::EncoderChoice;
use sd_pipeline::PipelineError;

#[derive(Args, Debug, Clone)]
pub struct EncoderArgs {
    /// SD3's T5 encoder: `none` leaves it out (T5-XXL is about 10 GB in
    /// f16; its states are zeros, as diffusers' without text_encoder_3),
    /// `required` refuses a model without one, a file (ComfyUI's
    /// `t5xxl_fp16.safetensors`) supplies it. Default: used when there.
    #[arg(long, value_name = "none|required|FILE")]
    pub t5: Option<String>,
    /// CLIP-L from a file of its own (ComfyUI's `clip_l.safetensors`).
    #[arg(long, value_name = "FILE")]
    pub clip_l: Option<PathBuf>,
    /// CLIP-G from a file of its own (ComfyUI's `clip_g.safetensors`).
    #[arg(long, value_name = "FILE")]
    pub clip_g: Option<PathBuf>,
    /// The VAE from a file of its own (BFL's `ae.safetensors` for FLUX,
    /// A1111's `vae-ft-mse-840000-ema-pruned.safetensors`; diffusers' or
    /// the LDM names); its config comes from the model.
    #[arg(long, value_name = "FILE")]
    pub vae: Option<PathBuf>,
}

impl EncoderArgs {
    /// The request layer's reading of these options.
    pub fn choice(&self) -> Result<EncoderChoice, PipelineError> {
        EncoderChoice::parse(
            self.t5.as_deref(),
            self.clip_l.as_deref(),
            self.clip_g.as_deref(),
        )?
        .with_vae(self.vae.as_deref())
    }
}
