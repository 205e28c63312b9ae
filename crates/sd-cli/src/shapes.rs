//! The project's own shapes model, carried inside the `sd` binary so that
//! the README's main job works wherever the binary goes (after `cargo
//! install`, with the source tree gone). Its files live in the sd-cli
//! package (`crates/sd-cli/shapes/`, written by `sd train --shapes`) and are
//! compiled in; on first use they are written once to a cache folder named
//! by their content hash, which the pipeline then loads like any folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../shapes/", $path)) as &[u8])),*]
    };
}

/// Every file of the diffusers folder (7 MB, weights in f16).
const FILES: &[(&str, &[u8])] = embedded![
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

/// FNV-1a over every name and byte: a new model gets a new folder.
fn content_hash() -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (name, bytes) in FILES {
        for &b in name.as_bytes().iter().chain(*bytes) {
            hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The per-user cache folder: `$SD_CACHE_DIR`, `$XDG_CACHE_HOME/sd-rs`,
/// `~/.cache/sd-rs`, or the temp folder.
fn cache_root() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("SD_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("sd-rs");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".cache/sd-rs");
    }
    std::env::temp_dir().join("sd-rs")
}

/// The shapes model as a folder, written out on first use.
pub fn folder() -> Result<PathBuf> {
    // (named `shapes` inside a versioned folder: PNGs record a model by its
    // folder's name)
    let dir = cache_root()
        .join(format!("shapes-{:016x}", content_hash()))
        .join("shapes");
    if dir.join("model_index.json").is_file() {
        return Ok(dir);
    }
    write_atomically(&dir).with_context(|| {
        format!(
            "cannot write the built-in shapes model to {} (set SD_CACHE_DIR to a writable folder)",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// Writes every file into a fresh sibling folder, then renames it into
/// place, so a concurrent or interrupted run never sees half a model.
fn write_atomically(dir: &Path) -> Result<()> {
    let parent = dir.parent().expect("a cache subfolder");
    std::fs::create_dir_all(parent)?;
    let temp = parent.join(format!(".shapes-{}.partial", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    for (name, bytes) in FILES {
        let path = temp.join(name);
        std::fs::create_dir_all(path.parent().expect("files sit in a folder"))?;
        std::fs::write(&path, bytes)?;
    }
    match std::fs::rename(&temp, dir) {
        Ok(()) => Ok(()),
        // another run won the race: its folder is complete
        Err(_) if dir.join("model_index.json").is_file() => {
            let _ = std::fs::remove_dir_all(&temp);
            Ok(())
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&temp);
            Err(error.into())
        }
    }
}
