//! Compiled models (issue 32): the pipeline's UNet and VAE decoder, with
//! exactly the weights it holds (LoRAs merged included), exported from
//! diffusers' own modules and compiled by torch's compiler (AOTInductor,
//! freezing on) in a Python with torch and diffusers; each package is then
//! run from Rust for the calls whose shapes it was made for
//! (`sd_core::ffi::aoti`).
//!
//! A package is native code for one machine: its key records the weights'
//! fingerprint, the call's shapes, dtype, device, torch version and CPU
//! instruction set, and a package that differs in any of them is refused.

use std::path::{Path, PathBuf};

use sd_core::shared::Frozen;

use crate::builder::StableDiffusionBuilder;

mod decoder;
mod job;
mod key;
mod load;
mod unet;

pub use decoder::DecodeExecution;
pub(crate) use decoder::{CompiledDecoder, DecoderPackages};
pub(crate) use unet::fitting;
pub(crate) use unet::CompiledUNet;

/// A part of the pipeline that is compiled into a package of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Part {
    /// The UNet's call, CFG-batched (SD1.x, SD2.x, SDXL).
    UNet,
    /// The VAE's decoder (`post_quant_conv`, then the decoder), a run's
    /// latents in, its images out.
    VaeDecoder,
}

impl Part {
    /// Every part, in the order they are compiled.
    pub const ALL: [Part; 2] = [Part::UNet, Part::VaeDecoder];

    /// Its name, in package files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Part::UNet => "unet",
            Part::VaeDecoder => "vae-decoder",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Part {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        Part::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| format!("{text:?} is not a part to compile (unet, vae-decoder)"))
    }
}

/// What to compile for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CompileSpec {
    /// Output size in pixels.
    pub width: u32,
    /// As `width`.
    pub height: u32,
    /// Images per run (the UNet batch is twice this under CFG).
    pub images: usize,
    /// The parts to compile (`compile`), or to look for (`use_compiled`).
    pub parts: Vec<Part>,
    /// A Python with torch (the version this program links) and diffusers.
    pub python: PathBuf,
    /// Where packages are kept.
    pub cache_dir: PathBuf,
}

impl CompileSpec {
    /// `width`x`height`, one image, every part, with `python`, packages in
    /// `cache_dir`.
    pub fn new(width: u32, height: u32, python: PathBuf, cache_dir: PathBuf) -> Self {
        CompileSpec {
            width,
            height,
            images: 1,
            parts: Part::ALL.to_vec(),
            python,
            cache_dir,
        }
    }
}

/// Where packages are kept by default: `$XDG_CACHE_HOME/sd-rs/compiled`
/// (`~/.cache/sd-rs/compiled`).
pub fn default_cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")));
    base.unwrap_or_else(std::env::temp_dir)
        .join("sd-rs/compiled")
}

/// The Python that compiles: `SD_PYTHON`, else the project's virtualenv
/// (`.venv/bin/python` here), else `python3`.
pub fn default_python() -> PathBuf {
    if let Some(python) = std::env::var_os("SD_PYTHON").filter(|v| !v.is_empty()) {
        return python.into();
    }
    let venv = PathBuf::from(".venv/bin/python");
    match venv.exists() {
        true => venv,
        false => "python3".into(),
    }
}

/// The packages a pipeline has loaded.
#[derive(Default)]
pub(crate) struct Compiled {
    pub unets: Vec<Frozen<CompiledUNet>>,
    pub decoders: Vec<Frozen<CompiledDecoder>>,
}

impl Compiled {
    fn holds(&self, path: &Path) -> bool {
        let unets = self.unets.iter().map(|c| &c.path);
        unets
            .chain(self.decoders.iter().map(|c| &c.path))
            .any(|p| p == path)
    }
}

impl StableDiffusionBuilder {
    /// Runs the UNet (and the VAE decoder) through the packages `sd
    /// compile` made for this model's weights on this machine (kept in
    /// [`default_cache_dir`]) wherever a run's shapes fit one; other runs
    /// stay eager, and each [`Generation`](crate::Generation) says which way
    /// it ran. A model without a UNet (SD3, FLUX.1), or with weights not in
    /// the pipeline's dtype (GGUF, 8-bit), has no UNet packages: it runs
    /// eager.
    pub fn compiled(self, on: bool) -> Self {
        self.compiled_in(on.then(default_cache_dir))
    }

    /// As [`compiled`](Self::compiled), with packages kept in `dir`
    /// (`None`: off).
    pub fn compiled_in(mut self, dir: Option<PathBuf>) -> Self {
        self.compiled = dir;
        self
    }
}
