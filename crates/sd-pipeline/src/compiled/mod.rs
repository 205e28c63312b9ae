//! Compiled UNets (issue 32): the pipeline's UNet, with exactly the weights
//! it holds (LoRAs merged included), exported from diffusers' own module and
//! compiled by torch's compiler (AOTInductor, freezing on) in a Python with
//! torch and diffusers; the package is then run from Rust for the runs whose
//! shapes it was made for (`sd_core::ffi::aoti`).
//!
//! A package is native code for one machine: its key records the weights'
//! fingerprint, the call's shapes, dtype, device, torch version and CPU
//! instruction set, and a package that differs in any of them is refused.

use std::path::{Path, PathBuf};

use sd_core::ffi::aoti;
use sd_core::shared::Frozen;
use sd_unet::UNet2DConditionModel;
use tch::{Device, Kind};

use crate::builder::StableDiffusionBuilder;
use crate::error::{PipelineError, Result};
use crate::pipeline::StableDiffusion;

mod job;
mod package;

pub(crate) use package::fitting;
pub(crate) use package::CompiledUNet;
use package::{check_weights, fingerprint};

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
    /// A Python with torch (the version this program links) and diffusers.
    pub python: PathBuf,
    /// Where packages are kept.
    pub cache_dir: PathBuf,
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

impl CompileSpec {
    /// `width`x`height`, one image, with `python`, packages in `cache_dir`.
    pub fn new(width: u32, height: u32, python: PathBuf, cache_dir: PathBuf) -> Self {
        CompileSpec {
            width,
            height,
            images: 1,
            python,
            cache_dir,
        }
    }
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        _ => "f32",
    }
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// A package key's two ends for this pipeline's UNet: the weights'
/// fingerprint, and dtype, device, torch version and CPU capability. A
/// package's key is `{weights}-{batch}x{h}x{w}{machine}`.
struct KeyParts {
    weights: String,
    machine: String,
}

impl StableDiffusion {
    /// Compiles this pipeline's UNet as it is now (LoRAs merged included)
    /// for runs of `spec`'s size and images with CFG, and loads it; a
    /// package already made for the same weights and run is reused. Takes
    /// minutes: `progress` hears each stage.
    pub fn compile_unet(
        &mut self,
        spec: &CompileSpec,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf> {
        let unet = self.unet_for_compile()?;
        let parts = self.key_parts(unet);
        let (package, key, [batch, h, w]) = self.package_for(&parts, spec);
        if !package.exists() {
            progress(&format!("exporting the UNet ({batch}x{h}x{w} latents)"));
            self.write_compile_job(unet, spec, &package, [batch, h, w], &key)?;
            progress(&format!(
                "compiling with {} (minutes)",
                spec.python.display()
            ));
            self.run_compile_job(spec, &package)?;
        }
        self.load_package(&package, &parts)?;
        Ok(package)
    }

    /// Loads the package `compile_unet` made for `spec` and this UNet, if
    /// there is one (its path), else `None`: the runs stay eager.
    pub fn use_compiled_unet(&mut self, spec: &CompileSpec) -> Result<Option<PathBuf>> {
        let parts = self.key_parts(self.unet_for_compile()?);
        let (package, _, _) = self.package_for(&parts, spec);
        if !package.exists() {
            return Ok(None);
        }
        self.load_package(&package, &parts)?;
        Ok(Some(package))
    }

    /// The package's path for `spec` and this UNet, its key, and the UNet
    /// call's (batch, latent height, latent width).
    fn package_for(&self, parts: &KeyParts, spec: &CompileSpec) -> (PathBuf, String, [i64; 3]) {
        let factor = self.vae_scale_factor() as u32;
        let (h, w) = (
            i64::from(spec.height / factor),
            i64::from(spec.width / factor),
        );
        let batch = 2 * spec.images as i64;
        let key = format!("{}-{batch}x{h}x{w}{}", parts.weights, parts.machine);
        (
            spec.cache_dir.join(format!("unet-{key}.pt2")),
            key,
            [batch, h, w],
        )
    }

    fn key_parts(&self, unet: &UNet2DConditionModel) -> KeyParts {
        KeyParts {
            weights: fingerprint(unet),
            machine: self.machine_tail(),
        }
    }

    /// The key's end: dtype, device, torch version and CPU capability
    /// (cheap, unlike the weights' fingerprint).
    fn machine_tail(&self) -> String {
        format!(
            "-{}-{}-{}-{}",
            dtype_name(self.denoiser.dtype()),
            device_name(self.devices().unet).replace(':', ""),
            aoti::torch_version(),
            aoti::cpu_capability().to_lowercase()
        )
    }

    fn unet_for_compile(&self) -> Result<&UNet2DConditionModel> {
        let unet = self.unet().ok_or_else(|| {
            PipelineError::model(
                &self.dir,
                "compiling is for UNet models (SD1.x, SD2.x, SDXL)",
            )
        })?;
        check_weights(unet, self.denoiser.dtype())
            .map_err(|why| PipelineError::model(&self.dir, why))?;
        Ok(unet)
    }

    /// Uses a package `compile_unet` made, for the runs it fits; one made
    /// for other weights, dtype, device, torch or CPU is refused in one line.
    pub fn load_compiled_unet(&mut self, package: &Path) -> Result<()> {
        let parts = self.key_parts(self.unet_for_compile()?);
        self.load_package(package, &parts)
    }

    fn load_package(&mut self, package: &Path, parts: &KeyParts) -> Result<()> {
        let meta = aoti::metadata(package)?;
        let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
        let wanted_prefix = format!("{}-", parts.weights);
        let tail = &parts.machine;
        let key = get("sd.key");
        if !key.starts_with(&wanted_prefix) || !key.ends_with(tail.as_str()) {
            return Err(PipelineError::model(
                package,
                format!("compiled for another model or machine ({key}); this run needs {wanted_prefix}...{tail}"),
            ));
        }
        let shape: Vec<i64> = get("sd.shape")
            .split('x')
            .filter_map(|v| v.parse().ok())
            .collect();
        let [b, h, w, tokens] = shape[..] else {
            return Err(PipelineError::model(
                package,
                "its metadata has no sd.shape",
            ));
        };
        if self.compiled.iter().any(|c| c.path == package) {
            return Ok(());
        }
        // SAFETY: the metadata says this machine's torch and CPU made it for
        // these weights (what compile_unet writes and reads back).
        let compiled = unsafe {
            CompiledUNet::load(
                package,
                self.devices().unet,
                self.loras(),
                ([b, h, w, tokens], self.denoiser.dtype()),
            )
        }?;
        self.compiled.push(Frozen::new(compiled));
        Ok(())
    }

    /// Loads every package kept in `dir` for this UNet's weights on this
    /// machine (one per size and image count `sd compile` was given): each
    /// run uses the one made for its shapes, others run eager. Their paths,
    /// none when there are none (a model without a UNet, or with weights
    /// kept narrow, has none: a server with mixed models runs those eager).
    pub fn use_compiled_unets(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(Vec::new());
        };
        let Ok(unet) = self.unet_for_compile() else {
            return Ok(Vec::new());
        };
        // (the fingerprint is a pass over every weight: only when some
        // package was made for this machine, not at every model load)
        let tail = format!("{}.pt2", self.machine_tail());
        let name = |p: &PathBuf| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        };
        let candidates: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = name(p);
                name.starts_with("unet-") && name.ends_with(&tail) && !name.contains(".partial.")
            })
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let parts = self.key_parts(unet);
        let head = format!("unet-{}-", parts.weights);
        let mut packages: Vec<PathBuf> = candidates
            .into_iter()
            .filter(|p| name(p).starts_with(&head))
            .collect();
        packages.sort();
        for package in &packages {
            self.load_package(package, &parts)?;
        }
        Ok(packages)
    }
}

impl StableDiffusionBuilder {
    /// Runs the UNet through the packages `sd compile` made for this
    /// model's weights on this machine (kept in [`default_cache_dir`])
    /// wherever a run's shapes fit one; other runs stay eager, and each
    /// [`Generation`](crate::Generation) says which way it ran. A model
    /// without a UNet (SD3, FLUX.1), or with weights not in the pipeline's
    /// dtype (GGUF, 8-bit), has no packages: it runs eager.
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
