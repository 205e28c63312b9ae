//! Compiled UNets (issue 32): the pipeline's UNet, with exactly the weights
//! it holds (LoRAs merged included), exported from diffusers' own module and
//! compiled by torch's compiler (AOTInductor, freezing on) in a Python with
//! torch and diffusers; the package is then run from Rust for the runs whose
//! shapes it was made for (`sd_core::ffi::aoti`).
//!
//! A package is native code for one machine: its metadata records the
//! weights' fingerprint, the shapes, dtype, device, torch version and CPU
//! instruction set, and a package that differs in any of them is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_core::ffi::aoti::{self, CompiledPackage};
use sd_core::DiffusersModel;
use sd_unet::UNet2DConditionModel;
use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::pipeline::StableDiffusion;

/// The compiling script, run by the given Python.
const SCRIPT: &str = include_str!("compile_unet.py");

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

/// A loaded package and the UNet call it was compiled for.
pub(crate) struct CompiledUNet {
    package: CompiledPackage,
    /// (UNet batch, latent height, latent width, context tokens)
    shape: [i64; 4],
}

impl CompiledUNet {
    /// The prediction for a call that [`fits`](Self::fits).
    pub(crate) fn run(&self, sample: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        let t = t.to_kind(Kind::Float).reshape([] as [i64; 0]);
        let mut out = self.package.run(&[sample, &t, context])?;
        Ok(out.remove(0))
    }

    /// Whether a call of these shapes is the one compiled.
    pub(crate) fn fits(
        &self,
        sample: &Tensor,
        context: &Tensor,
    ) -> std::result::Result<(), String> {
        let [b, h, w, tokens] = self.shape;
        let (s, c) = (sample.size(), context.size());
        if s[0] != b || s[2] != h || s[3] != w || c[1] != tokens {
            return Err(format!(
                "compiled for a UNet batch of {b} at {h}x{w} latents with {tokens} tokens; \
                 this step is {}x{}x{} with {}",
                s[0], s[2], s[3], c[1]
            ));
        }
        Ok(())
    }
}

/// Where the compiler writes: renamed to the package only when it succeeded
/// (a half-written package must never be found and loaded).
fn partial(package: &Path) -> PathBuf {
    package.with_extension("partial.pt2")
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        _ => "f32",
    }
}

/// The UNet's weights in one short text: each variable's name, shape and
/// two sums (merging a LoRA moves them), hashed. One pass over the weights
/// (the sums accumulate in f64 without an f64 copy of the weights).
fn fingerprint(unet: &UNet2DConditionModel) -> String {
    use std::hash::{Hash, Hasher};
    let variables: BTreeMap<String, Tensor> = unet.var_store().variables().into_iter().collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let _guard = tch::no_grad_guard();
    for (name, t) in &variables {
        name.hash(&mut hasher);
        t.size().hash(&mut hasher);
        f64::try_from(t.sum(Kind::Double))
            .unwrap_or(f64::NAN)
            .to_bits()
            .hash(&mut hasher);
        f64::try_from(t.abs().sum(Kind::Double))
            .unwrap_or(f64::NAN)
            .to_bits()
            .hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
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
            machine: format!(
                "-{}-{}-{}-{}",
                dtype_name(self.denoiser.dtype()),
                device_name(self.devices().unet).replace(':', ""),
                aoti::torch_version(),
                aoti::cpu_capability().to_lowercase()
            ),
        }
    }

    fn unet_for_compile(&self) -> Result<&UNet2DConditionModel> {
        let unet = self.unet().ok_or_else(|| {
            PipelineError::model(
                &self.dir,
                "compiling is for UNet models (SD1.x, SD2.x, SDXL)",
            )
        })?;
        if unet.config().addition_embed_type.is_some() {
            return Err(PipelineError::model(
                &self.dir,
                "compiling SDXL's UNet is not supported yet",
            ));
        }
        Ok(unet)
    }

    /// The job's files beside the package: the weights and the spec.
    fn write_compile_job(
        &self,
        unet: &UNet2DConditionModel,
        spec: &CompileSpec,
        package: &Path,
        [batch, h, w]: [i64; 3],
        key: &str,
    ) -> Result<()> {
        std::fs::create_dir_all(&spec.cache_dir)
            .map_err(|e| sd_core::CoreError::io(&spec.cache_dir, e))?;
        let weights = package.with_extension("weights.safetensors");
        let variables: Vec<(String, Tensor)> = unet.var_store().variables().into_iter().collect();
        Tensor::write_safetensors(&variables, &weights)?;
        let config = serde_json::to_value(unet.config())
            .map_err(|e| PipelineError::model(&self.dir, e.to_string()))?;
        let job = serde_json::json!({
            "unet_config": config, "weights": weights, "dtype": dtype_name(self.denoiser.dtype()),
            "device": device_name(self.devices().unet), "batch": batch, "height": h, "width": w,
            "tokens": 77, "text_embeds": 0, "time_ids": 0, "package": partial(package),
            "metadata": {"sd.key": key, "sd.shape": format!("{batch}x{h}x{w}x77")},
        });
        let path = package.with_extension("job.json");
        std::fs::write(&path, job.to_string()).map_err(|e| sd_core::CoreError::io(&path, e))?;
        Ok(())
    }

    fn run_compile_job(&self, spec: &CompileSpec, package: &Path) -> Result<()> {
        let script = package.with_extension("compile.py");
        std::fs::write(&script, SCRIPT).map_err(|e| sd_core::CoreError::io(&script, e))?;
        let job = package.with_extension("job.json");
        let out = std::process::Command::new(&spec.python)
            .arg(&script)
            .arg(&job)
            .output();
        let out =
            out.map_err(|e| PipelineError::model(&spec.python, format!("cannot run it: {e}")))?;
        for leftover in [package.with_extension("weights.safetensors"), script, job] {
            let _ = std::fs::remove_file(leftover);
        }
        let written = partial(package);
        if out.status.success() && written.exists() {
            std::fs::rename(&written, package).map_err(|e| sd_core::CoreError::io(package, e))?;
        }
        let _ = std::fs::remove_file(&written);
        if !out.status.success() || !package.exists() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // (the last line that is no C++ stack frame: Python's message)
            let message = |l: &&str| {
                let l = l.trim_start();
                !l.is_empty()
                    && !l.starts_with("frame #")
                    && !l.starts_with("Exception raised from")
            };
            let last = stderr.lines().rev().find(message).unwrap_or("no message");
            return Err(PipelineError::model(
                &spec.python,
                format!("the compile failed: {last}"),
            ));
        }
        Ok(())
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
        // SAFETY: the metadata says this machine's torch and CPU made it for
        // these weights (what compile_unet writes and reads back).
        let loaded = unsafe { CompiledPackage::load(package, self.devices().unet) }?;
        self.compiled = Some(sd_core::shared::Frozen::new(CompiledUNet {
            package: loaded,
            shape: [b, h, w, tokens],
        }));
        Ok(())
    }
}

// SAFETY: CompiledPackage is Sync (its runs are serialised by libtorch's
// loader); the shape is plain data.
unsafe impl sd_core::shared::ReadOnlyShared for CompiledUNet {}
