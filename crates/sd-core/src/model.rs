//! [`DiffusersModel`]: how the CLIP text encoders, the UNet and the VAE load.
//!
//! Each is a `config.json` plus `{stem}[.variant].safetensors` (possibly
//! sharded) in its diffusers folder, and each builds its variables first
//! (under their diffusers key names) and then fills them from files. The
//! model says how it is built; the loading is written once, here.

use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Kind};

use crate::error::CoreError;
use crate::weights::{component_files, copy_variables, load_mapped, KeyMap};

/// A model stored as a diffusers component folder.
pub trait DiffusersModel: Sized {
    /// Its `config.json`, as a serde struct.
    type Config;
    /// The crate's error type.
    type Error: From<CoreError>;
    /// The weight file stem in the folder: `diffusion_pytorch_model` for
    /// diffusers models, `model` for transformers ones.
    const WEIGHTS_STEM: &'static str;

    /// Reads and checks a `config.json`.
    fn read_config(path: &Path) -> Result<Self::Config, Self::Error>;

    /// The model of `config` with uninitialised parameters on `device`, in
    /// `dtype` (made in that dtype: an f32 build converted afterwards would
    /// first claim twice the memory).
    fn new_in(config: &Self::Config, device: Device, dtype: Kind) -> Result<Self, Self::Error>;

    /// The model's config.
    fn config(&self) -> &Self::Config;

    /// The model's variables, under their diffusers names.
    fn var_store(&self) -> &VarStore;

    /// How a key in the folder's files maps to a variable (legacy names
    /// are renamed here; `Skip` drops buffers the model recomputes).
    fn folder_key(key: &str) -> KeyMap {
        KeyMap::To(key.to_string())
    }

    /// Called once the weights are in (the VAE upcasts here).
    fn after_load(&mut self) {}

    /// Called on a fresh copy made by [`DiffusersModel::copy_to`], to carry
    /// settings that are not weights (the VAE's tiling and slicing).
    fn copy_settings_to(&self, _copy: &mut Self) {}

    /// Loads a component folder (`config.json` and the weights) onto
    /// `device` in `dtype`; `variant` picks `*.{variant}.safetensors`.
    fn from_folder(
        dir: impl AsRef<Path>,
        device: Device,
        dtype: Kind,
        variant: Option<&str>,
    ) -> Result<Self, Self::Error> {
        let dir = dir.as_ref();
        let config = Self::read_config(&dir.join("config.json"))?;
        let files = component_files(dir, Self::WEIGHTS_STEM, variant)?;
        Self::from_files(&config, &files, device, dtype, &Self::folder_key)
    }

    /// Builds `config` and fills it from `files`, each key mapped by `map`
    /// (single-file checkpoints map the original LDM names); every missing,
    /// unexpected or wrongly shaped tensor is reported by name.
    fn from_files(
        config: &Self::Config,
        files: &[PathBuf],
        device: Device,
        dtype: Kind,
        map: &dyn Fn(&str) -> KeyMap,
    ) -> Result<Self, Self::Error> {
        let mut model = Self::new_in(config, device, dtype)?;
        load_mapped(model.var_store(), files, map, false)?;
        model.after_load();
        Ok(model)
    }

    /// A copy of the weights on `device`, in the same dtype (low-memory
    /// pipelines bring a model to the GPU only while it runs).
    fn copy_to(&self, device: Device) -> Result<Self, Self::Error> {
        self.copy_as(device, self.var_store().kind())
    }

    /// A copy of the weights on `device` in `dtype` (the VAE's f32 twin
    /// for an upcast decode).
    fn copy_as(&self, device: Device, dtype: Kind) -> Result<Self, Self::Error> {
        let mut copy = Self::new_in(self.config(), device, dtype)?;
        copy_variables(self.var_store(), copy.var_store())?;
        self.copy_settings_to(&mut copy);
        Ok(copy)
    }
}
