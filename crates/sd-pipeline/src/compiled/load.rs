//! Compiling a pipeline's parts, and finding and loading the packages kept
//! for them: each part's weights, the shape of the call it is compiled
//! for, and the checks that refuse another model's or machine's package.

use std::path::{Path, PathBuf};

use sd_core::ffi::aoti;
use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use tch::nn::VarStore;
use tch::{Device, Kind};

use super::key::{check_weights, fingerprint, machine_tail, KeyParts};
use super::{CompileSpec, CompiledDecoder, CompiledUNet, Part};
use crate::error::{PipelineError, Result};
use crate::pipeline::StableDiffusion;

/// One part as the pipeline holds it: its weights, and where and in what
/// dtype it runs.
pub(super) struct Subject<'a> {
    pub part: Part,
    pub weights: &'a VarStore,
    pub dtype: Kind,
    pub device: Device,
}

impl Subject<'_> {
    pub fn key_parts(&self) -> KeyParts {
        KeyParts {
            weights: fingerprint(self.weights),
            dtype: self.dtype,
            device: self.device,
        }
    }

    /// The packages among `files` kept for this part on this machine (any
    /// weights, any shape), leftovers of a compile excluded: finding none
    /// spares the fingerprint, a pass over every weight.
    fn kept_among(&self, files: &[PathBuf]) -> Vec<PathBuf> {
        let head = format!("{}-", self.part);
        let tail = format!("{}.pt2", machine_tail(self.dtype, self.device));
        let kept = |name: &str| {
            name.starts_with(&head) && name.ends_with(&tail) && !name.contains(".partial.")
        };
        let mut packages: Vec<PathBuf> = files
            .iter()
            .filter(|p| kept(&file_name(p)))
            .cloned()
            .collect();
        packages.sort();
        packages
    }
}

fn file_name(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default();
    name.to_string_lossy().into_owned()
}

/// The files in `dir`, none when it cannot be read (nothing kept yet).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.filter_map(|e| e.ok().map(|e| e.path())).collect()
}

impl StableDiffusion {
    /// Compiles `spec`'s parts as the pipeline holds them now (LoRAs merged
    /// included) for runs of its size and images, and loads them; a package
    /// already made for the same weights and run is reused. Takes minutes:
    /// `progress` hears each stage. The packages' paths, in `spec.parts`'
    /// order.
    pub fn compile(
        &mut self,
        spec: &CompileSpec,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<PathBuf>> {
        let mut wanted = Vec::new();
        let mut jobs = Vec::new();
        for &part in &spec.parts {
            let subject = self.subject(part)?;
            let parts = subject.key_parts();
            let shape = self.call_shape(part, spec);
            let key = parts.key(shape);
            let package = spec.cache_dir.join(format!("{part}-{key}.pt2"));
            if !package.exists() {
                let [n, h, w] = shape;
                progress(&format!("exporting the {part} ({n}x{h}x{w} latents)"));
                jobs.push(self.write_job(&subject, spec, &package, shape, &key)?);
            }
            wanted.push((part, package, parts));
        }
        if !jobs.is_empty() {
            progress(&format!(
                "compiling with {} (minutes)",
                spec.python.display()
            ));
            self.run_compile_job(spec, &jobs)?;
        }
        for (part, package, parts) in &wanted {
            self.load_package(*part, package, parts)?;
        }
        Ok(wanted.into_iter().map(|(_, package, _)| package).collect())
    }

    /// Loads the packages `compile` made for `spec`'s parts and these
    /// weights, where there are some (each part found, and its package;
    /// none: the runs stay eager).
    pub fn use_compiled(&mut self, spec: &CompileSpec) -> Result<Vec<(Part, PathBuf)>> {
        let files = files_in(&spec.cache_dir);
        let mut found = Vec::new();
        for &part in &spec.parts {
            let subject = self.subject(part)?;
            if subject.kept_among(&files).is_empty() {
                continue;
            }
            let parts = subject.key_parts();
            let key = parts.key(self.call_shape(part, spec));
            let package = spec.cache_dir.join(format!("{part}-{key}.pt2"));
            if package.exists() {
                self.load_package(part, &package, &parts)?;
                found.push((part, package));
            }
        }
        Ok(found)
    }

    /// Uses a package `compile` made, for the calls it fits; one made for
    /// other weights, dtype, device, torch or CPU is refused in one line.
    pub fn load_compiled(&mut self, package: &Path) -> Result<()> {
        let meta = aoti::metadata(package)?;
        let part = match meta.get("sd.part") {
            None => Part::UNet,
            Some(name) => name
                .parse()
                .map_err(|e: String| PipelineError::model(package, e))?,
        };
        let parts = self.subject(part)?.key_parts();
        self.load_package(part, package, &parts)
    }

    /// Loads every package kept in `dir` for this pipeline's weights on this
    /// machine (one per part, size and image count `sd compile` was given):
    /// each call uses the one made for its shapes, others run eager. Their
    /// paths, none when there are none (a model without a UNet, or with
    /// weights kept narrow, has no UNet packages: a server with mixed
    /// models runs those eager).
    pub fn use_compiled_in(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        let files = files_in(dir);
        let mut loaded = Vec::new();
        for part in Part::ALL {
            let Ok(subject) = self.subject(part) else {
                continue;
            };
            let kept = subject.kept_among(&files);
            if kept.is_empty() {
                continue;
            }
            let parts = subject.key_parts();
            let head = format!("{part}-{}-", parts.weights);
            let packages: Vec<PathBuf> = kept
                .into_iter()
                .filter(|p| file_name(p).starts_with(&head))
                .collect();
            for package in &packages {
                self.load_package(part, package, &parts)?;
            }
            loaded.extend(packages);
        }
        Ok(loaded)
    }

    /// `part` as the pipeline holds it, if it can be compiled as it is.
    pub(super) fn subject(&self, part: Part) -> Result<Subject<'_>> {
        let (weights, dtype, device) = match part {
            Part::UNet => {
                let unet = self.unet().ok_or_else(|| {
                    PipelineError::model(
                        &self.dir,
                        "compiling is for UNet models (SD1.x, SD2.x, SDXL)",
                    )
                })?;
                (unet.var_store(), self.denoiser.dtype(), self.devices().unet)
            }
            Part::VaeDecoder => (self.vae.var_store(), self.vae.dtype(), self.devices().vae),
        };
        check_weights(weights, dtype).map_err(|why| PipelineError::model(&self.dir, why))?;
        Ok(Subject {
            part,
            weights,
            dtype,
            device,
        })
    }

    /// The call `part` makes in a run of `spec`: (batch, latent height,
    /// latent width). The UNet's batch is CFG's; the decoder's one image
    /// when the VAE decodes a batch slice by slice.
    fn call_shape(&self, part: Part, spec: &CompileSpec) -> [i64; 3] {
        let factor = self.vae_scale_factor() as u32;
        let (h, w) = (
            i64::from(spec.height / factor),
            i64::from(spec.width / factor),
        );
        let images = spec.images as i64;
        match part {
            Part::UNet => [2 * images, h, w],
            Part::VaeDecoder if self.vae.slicing() => [1, h, w],
            Part::VaeDecoder => [images, h, w],
        }
    }

    fn load_package(&mut self, part: Part, package: &Path, parts: &KeyParts) -> Result<()> {
        let meta = aoti::metadata(package)?;
        let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
        let wanted_prefix = format!("{}-", parts.weights);
        let tail = parts.machine();
        let key = get("sd.key");
        let made_for = meta.get("sd.part").map_or("unet", String::as_str);
        if made_for != part.name()
            || !key.starts_with(&wanted_prefix)
            || !key.ends_with(tail.as_str())
        {
            return Err(PipelineError::model(
                package,
                format!("compiled for another model or machine ({made_for} {key}); this run needs {part} {wanted_prefix}...{tail}"),
            ));
        }
        let shape: Vec<i64> = get("sd.shape")
            .split('x')
            .filter_map(|v| v.parse().ok())
            .collect();
        let Ok(shape) = <[i64; 4]>::try_from(shape) else {
            return Err(PipelineError::model(
                package,
                "its metadata has no sd.shape",
            ));
        };
        if self.compiled.holds(package) {
            return Ok(());
        }
        let (device, dtype) = (parts.device, parts.dtype);
        // SAFETY: the metadata says this machine's torch and CPU made it for
        // these weights (what `compile` writes and reads back).
        match part {
            Part::UNet => {
                let loaded =
                    unsafe { CompiledUNet::load(package, device, self.loras(), (shape, dtype)) }?;
                self.compiled.unets.push(Frozen::new(loaded));
            }
            Part::VaeDecoder => {
                let loaded = unsafe { CompiledDecoder::load(package, device, shape) }?;
                self.compiled.decoders.push(Frozen::new(loaded));
            }
        }
        Ok(())
    }
}
