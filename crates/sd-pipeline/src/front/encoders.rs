//! Which text encoders (and VAE) a pipeline loads, as every frontend takes
//! it: `--t5 none|required|FILE`, `--clip-l FILE`, `--clip-g FILE`, `--vae
//! FILE` (the CLI and `sd serve`), `t5=`, `clip_l=`, `clip_g=`, `vae=` (sd_rs).

use std::path::{Path, PathBuf};

use crate::builder::StableDiffusionBuilder;
use crate::encoder_files::EncoderFiles;
use crate::error::{PipelineError, Result};
use crate::front::Field;

/// T5 wanted or not, and encoders (and the VAE) from files of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncoderChoice {
    /// `None`: T5 when the model has one; `Some(false)`: left out;
    /// `Some(true)`: required.
    pub t5: Option<bool>,
    /// Encoders from files of their own (a T5 file makes T5 required).
    pub files: EncoderFiles,
}

impl EncoderChoice {
    /// From the frontends' words: `t5` is `none`, `required` or a T5 file;
    /// `clip_l` and `clip_g` are files. A missing file is named here, once.
    pub fn parse(t5: Option<&str>, clip_l: Option<&Path>, clip_g: Option<&Path>) -> Result<Self> {
        let mut choice = EncoderChoice::default();
        match t5 {
            None => {}
            Some("none") => choice.t5 = Some(false),
            Some("required") => choice.t5 = Some(true),
            Some(file) => choice.files.t5 = Some(existing(Field::T5, Path::new(file))?),
        }
        if let Some(file) = clip_l {
            choice.files.clip_l = Some(existing(Field::ClipL, file)?);
        }
        if let Some(file) = clip_g {
            choice.files.clip_g = Some(existing(Field::ClipG, file)?);
        }
        Ok(choice)
    }

    /// The VAE from `file` (BFL's `ae.safetensors`, A1111's VAE files).
    pub fn with_vae(mut self, file: Option<&Path>) -> Result<Self> {
        if let Some(file) = file {
            self.files.vae = Some(existing(Field::Vae, file)?);
        }
        Ok(self)
    }

    /// `builder` with these choices.
    pub fn apply(&self, builder: StableDiffusionBuilder) -> StableDiffusionBuilder {
        let builder = builder.encoder_files(self.files.clone());
        match self.t5 {
            Some(on) => builder.t5(on),
            None => builder,
        }
    }
}

fn existing(field: Field, file: &Path) -> Result<PathBuf> {
    match file.is_file() {
        true => Ok(file.to_path_buf()),
        false if field == Field::T5 => Err(PipelineError::request(
            field,
            format!(
                "{}: no such file (give none, required, or a T5 encoder's .safetensors)",
                file.display()
            ),
        )),
        false => Err(PipelineError::request(
            field,
            format!("{}: no such file", file.display()),
        )),
    }
}
