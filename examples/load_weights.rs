//! Builds a ResnetBlock2D under a diffusers key prefix and loads it from a
//! safetensors file, printing what did not fit by name.
//!
//! cargo run -p sd-examples --example load_weights -- reference/fixtures/outputs/layers_weights.safetensors

use anyhow::{Context, Result};
use sd_core::layers::{ResnetBlock2D, ResnetConfig};
use sd_core::weights::{load_safetensors, LoadOptions};
use tch::{nn::VarStore, Device};

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: load_weights FILE.safetensors")?;
    let vs = VarStore::new(Device::Cpu);
    let mut config = ResnetConfig::new(16, 32, Some(24));
    config.groups = 8;
    let _block = ResnetBlock2D::new(vs.root() / "resnet", &config)?;
    // Only the "resnet." tensors belong to this block; other tensors of the
    // file are dropped by the rename hook.
    let keep = |key: &str| key.starts_with("resnet.").then(|| key.to_string());
    let options = LoadOptions {
        rename: Some(&keep),
        allow_unexpected: false,
    };
    match load_safetensors(&vs, &[&path], &options) {
        Ok(_) => println!("loaded {} tensors", vs.variables().len()),
        Err(error) => println!("{error}"),
    }
    Ok(())
}
