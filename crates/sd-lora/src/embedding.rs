//! Textual-inversion embedding files: new token vectors for the text
//! encoders.
//!
//! Forms read (safetensors only; pickles are refused):
//! - diffusers `learned_embeds.safetensors`: one key, the token itself;
//! - AUTOMATIC1111: `emb_params` (n, dim), the token being the file stem;
//! - SDXL: `clip_l` and `clip_g`, one set of vectors per text encoder.
//!
//! An embedding of n > 1 vectors becomes the tokens `t`, `t_1`, ...
//! `t_{n-1}`, and a prompt's `t` is read as all of them, as diffusers does.

use std::path::{Path, PathBuf};

use sd_core::weights::MappedFile;
use tch::{Kind, Tensor};

use crate::error::{LoraError, Result};
use crate::file::refuse_pickle;

/// The most vectors one embedding may have (a prompt holds 75 tokens).
pub const MAX_VECTORS: i64 = 75;

/// One textual-inversion file.
#[derive(Debug)]
pub struct EmbeddingFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The token prompts use for it.
    pub token: String,
    /// (vectors, dim) for the first text encoder (CLIP-L on SDXL).
    pub vectors: Tensor,
    /// (vectors, dim) for SDXL's second text encoder.
    pub vectors_2: Option<Tensor>,
}

impl EmbeddingFile {
    /// Reads `path`; `token` replaces the token the file gives (diffusers'
    /// key) or implies (the file stem).
    pub fn open(path: impl AsRef<Path>, token: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        refuse_pickle(path)?;
        let file = MappedFile::open(path)?;
        let names: Vec<String> = file
            .tensors()?
            .names()
            .into_iter()
            .map(String::from)
            .collect();
        let stem = || {
            path.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("embedding")
                .to_string()
        };
        let has = |k: &str| names.iter().any(|n| n == k);
        let (own_token, vectors, vectors_2) = if has("clip_l") && has("clip_g") {
            (stem(), file.read("clip_l")?, Some(file.read("clip_g")?))
        } else if has("emb_params") {
            (stem(), file.read("emb_params")?, None)
        } else if let Some(key) = names.iter().find(|n| n.starts_with("string_to_param.")) {
            (stem(), file.read(key)?, None)
        } else if names.len() == 1 {
            (names[0].clone(), file.read(&names[0])?, None)
        } else {
            return Err(LoraError::invalid(
                path.display().to_string(),
                format!(
                    "not a textual-inversion file: expected one key (diffusers), 'emb_params' \
                     (A1111) or 'clip_l' + 'clip_g' (SDXL), found {}",
                    preview(&names)
                ),
            ));
        };
        let token = token.map(str::to_string).unwrap_or(own_token);
        check_token(path, &token)?;
        Ok(EmbeddingFile {
            path: path.to_path_buf(),
            vectors: as_rows(path, "vectors", vectors)?,
            vectors_2: vectors_2.map(|v| as_rows(path, "clip_g", v)).transpose()?,
            token,
        })
    }

    /// The tokens a prompt gets for it: `t`, then `t_1`, `t_2`, ...
    pub fn tokens(&self) -> Vec<String> {
        let n = self.vectors.size()[0];
        (0..n)
            .map(|i| match i {
                0 => self.token.clone(),
                i => format!("{}_{i}", self.token),
            })
            .collect()
    }
}

fn preview(names: &[String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
    if names.len() > 4 {
        shown.push("...");
    }
    if shown.is_empty() {
        "no tensors".into()
    } else {
        shown.join(", ")
    }
}

fn check_token(path: &Path, token: &str) -> Result<()> {
    if token.trim().is_empty() || token.chars().any(char::is_whitespace) {
        return Err(LoraError::invalid(
            format!("{}: token", path.display()),
            format!("'{token}' must be one word without spaces"),
        ));
    }
    Ok(())
}

/// Vectors as (n, dim) floats: a (dim,) vector is one row.
fn as_rows(path: &Path, what: &str, t: Tensor) -> Result<Tensor> {
    let bad = |message: String| LoraError::invalid(format!("{}: {what}", path.display()), message);
    if !matches!(
        t.kind(),
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
    ) {
        return Err(bad(format!(
            "{:?} values; expected floating point",
            t.kind()
        )));
    }
    let rows = match t.size().as_slice() {
        [d] if *d > 0 => t.reshape([1, *d]),
        [n, d] if *n > 0 && *d > 0 => t,
        shape => {
            return Err(bad(format!(
                "shape {shape:?}; expected (dim) or (vectors, dim)"
            )))
        }
    };
    if rows.size()[0] > MAX_VECTORS {
        return Err(bad(format!(
            "{} vectors; a prompt holds at most {MAX_VECTORS}",
            rows.size()[0]
        )));
    }
    Ok(rows.to_kind(Kind::Float))
}
