//! `--hires-scale`, `--hires-upscaler`, `--hires-steps`, `--hires-strength`:
//! A1111's hires fix for `sd txt2img`, read into the request layer's
//! `HiresFix` (the upscaler's name as `sd_rs` reads it).

use clap::Args;
use sd_pipeline::{HiresFix, HiresSize, HiresUpscaler, PipelineError};

#[derive(Args, Debug, Clone)]
pub struct HiresArgs {
    /// Hires fix: generate at the size asked, enlarge by this factor, and
    /// denoise again at the large size (A1111's hr_scale).
    #[arg(id = "hires_scale", long = "hires-scale", value_name = "FACTOR")]
    pub scale: Option<f64>,
    /// Hires fix's enlargement: latent (bilinear), latent-antialiased,
    /// latent-bicubic, latent-bicubic-antialiased, latent-nearest,
    /// latent-nearest-exact, lanczos, nearest, or an upscaler model FILE.
    #[arg(
        id = "hires_upscaler",
        long = "hires-upscaler",
        value_name = "MODE|FILE",
        default_value = "latent"
    )]
    pub upscaler: String,
    /// Hires fix's second-pass steps (default: --steps).
    #[arg(id = "hires_steps", long = "hires-steps")]
    pub steps: Option<usize>,
    /// How much of the second pass's schedule runs.
    #[arg(id = "hires_strength", long = "hires-strength", default_value_t = 0.7)]
    pub strength: f64,
}

impl HiresArgs {
    /// Hires fix when `--hires-scale` is given.
    pub fn to_hires(&self) -> Result<Option<HiresFix>, PipelineError> {
        let Some(scale) = self.scale else {
            return Ok(None);
        };
        let upscaler = HiresUpscaler::parse_or_file(&self.upscaler)?;
        let mut hires = HiresFix::new(HiresSize::Scale(scale), upscaler);
        (hires.steps, hires.strength) = (self.steps, self.strength);
        Ok(Some(hires))
    }
}
