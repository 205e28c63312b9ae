//! The compile job: the UNet's weights and config written beside the
//! package-to-be, diffusers' module exported and compiled by the given
//! Python (compile_unet.py), the package renamed into place only when the
//! compile succeeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_core::DiffusersModel;
use sd_unet::UNet2DConditionModel;
use tch::Tensor;

use super::package::added_widths;
use super::{device_name, dtype_name, CompileSpec};
use crate::error::{PipelineError, Result};
use crate::pipeline::StableDiffusion;

/// The compiling script, run by the given Python.
const SCRIPT: &str = include_str!("compile_unet.py");

/// Where the compiler writes: renamed to the package only when it succeeded
/// (a half-written package must never be found and loaded).
fn partial(package: &Path) -> PathBuf {
    package.with_extension("partial.pt2")
}

impl StableDiffusion {
    /// The job's files beside the package: the weights as the pipeline
    /// holds them now, and the spec.
    pub(super) fn write_compile_job(
        &self,
        unet: &UNet2DConditionModel,
        spec: &CompileSpec,
        package: &Path,
        [batch, h, w]: [i64; 3],
        key: &str,
    ) -> Result<()> {
        std::fs::create_dir_all(&spec.cache_dir)
            .map_err(|e| sd_core::CoreError::io(&spec.cache_dir, e))?;
        let variables: BTreeMap<String, Tensor> =
            unet.var_store().variables().into_iter().collect();
        let weights = package.with_extension("weights.safetensors");
        let named: Vec<(&String, &Tensor)> = variables.iter().collect();
        Tensor::write_safetensors(&named, &weights)?;
        let config = serde_json::to_value(unet.config())
            .map_err(|e| PipelineError::model(&self.dir, e.to_string()))?;
        let (text_embeds, time_ids) = added_widths(unet);
        let job = serde_json::json!({
            "unet_config": config, "weights": weights,
            "dtype": dtype_name(self.denoiser.dtype()), "device": device_name(self.devices().unet),
            "batch": batch, "height": h, "width": w, "tokens": 77, "text_embeds": text_embeds,
            "time_ids": time_ids, "package": partial(package),
            "metadata": {"sd.key": key, "sd.shape": format!("{batch}x{h}x{w}x77")},
        });
        let path = package.with_extension("job.json");
        std::fs::write(&path, job.to_string()).map_err(|e| sd_core::CoreError::io(&path, e))?;
        Ok(())
    }

    pub(super) fn run_compile_job(&self, spec: &CompileSpec, package: &Path) -> Result<()> {
        let script = package.with_extension("compile.py");
        std::fs::write(&script, SCRIPT).map_err(|e| sd_core::CoreError::io(&script, e))?;
        let job = package.with_extension("job.json");
        // Inductor's own cache (kernels, the shared object with the weights
        // in it) would stay in /tmp/torchinductor_$USER: gigabytes a compile.
        // The package is what is kept; the cache goes with the job.
        let inductor = package.with_extension("inductor");
        let out = std::process::Command::new(&spec.python)
            .arg(&script)
            .arg(&job)
            .env("TORCHINDUCTOR_CACHE_DIR", &inductor)
            .output();
        let out =
            out.map_err(|e| PipelineError::model(&spec.python, format!("cannot run it: {e}")))?;
        for leftover in [package.with_extension("weights.safetensors"), script, job] {
            let _ = std::fs::remove_file(leftover);
        }
        let _ = std::fs::remove_dir_all(&inductor);
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
}
