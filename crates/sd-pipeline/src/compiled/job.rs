//! The compile job: each part's weights and config written beside its
//! package-to-be, diffusers' modules exported and compiled by the given
//! Python (compile.py, one process for every part), each package renamed
//! into place only when its compile succeeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_core::DiffusersModel;
use tch::Tensor;

use super::key::{device_name, dtype_name};
use super::load::Subject;
use super::unet::added_widths;
use super::{CompileSpec, Part};
use crate::error::{PipelineError, Result};
use crate::pipeline::StableDiffusion;

/// The compiling script, run by the given Python.
const SCRIPT: &str = include_str!("compile.py");

/// One part's compile: where its package goes, and what the script reads.
pub(super) struct Job {
    package: PathBuf,
    spec: serde_json::Value,
}

impl Job {
    /// Where the compiler writes: renamed to the package only when it
    /// succeeded (a half-written package must never be found and loaded).
    fn partial(&self) -> PathBuf {
        scratch(&self.package, "partial.pt2")
    }
}

/// A file of this job's beside `package`, named for this process and
/// thread: two compiles of the same package at once (two `sd compile`s, two
/// tests) must not write each other's files. The last to finish renames an
/// identical package into place.
fn scratch(package: &Path, what: &str) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static TAG: String = format!(
            "{}-{}",
            std::process::id(),
            CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
    }
    TAG.with(|tag| package.with_extension(format!("{tag}.{what}")))
}

impl StableDiffusion {
    /// `subject`'s job: its weights as the pipeline holds them now written
    /// beside the package, and what the script needs to rebuild the call.
    pub(super) fn write_job(
        &self,
        subject: &Subject<'_>,
        spec: &CompileSpec,
        package: &Path,
        [n, h, w]: [i64; 3],
        key: &str,
    ) -> Result<Job> {
        std::fs::create_dir_all(&spec.cache_dir)
            .map_err(|e| sd_core::CoreError::io(&spec.cache_dir, e))?;
        let variables: BTreeMap<String, Tensor> = subject.weights.variables().into_iter().collect();
        let named: Vec<(&String, &Tensor)> = variables.iter().collect();
        Tensor::write_safetensors(&named, scratch(package, "weights.safetensors"))?;
        let shape = match subject.part {
            Part::UNet => format!("{n}x{h}x{w}x77"),
            Part::VaeDecoder => format!("{n}x{}x{h}x{w}", self.vae.config().latent_channels),
        };
        let config = match subject.part {
            Part::UNet => self.unet().map(|unet| serde_json::to_value(unet.config())),
            Part::VaeDecoder => Some(serde_json::to_value(self.vae.config())),
        };
        let config = config
            .transpose()
            .map_err(|e| PipelineError::model(&self.dir, e.to_string()))?;
        let mut job = serde_json::json!({
            "part": subject.part.name(), "config": config, "weights": scratch(package, "weights.safetensors"),
            "dtype": dtype_name(subject.dtype), "device": device_name(subject.device),
            "batch": n, "height": h, "width": w, "package": scratch(package, "partial.pt2"),
            "metadata": {"sd.key": key, "sd.shape": shape, "sd.part": subject.part.name()},
        });
        if let (Part::UNet, Some(unet)) = (subject.part, self.unet()) {
            let (text_embeds, time_ids) = added_widths(unet);
            job["tokens"] = 77.into();
            job["text_embeds"] = text_embeds.into();
            job["time_ids"] = time_ids.into();
        }
        Ok(Job {
            package: package.to_path_buf(),
            spec: job,
        })
    }

    /// Runs every job in one Python process (torch and diffusers are
    /// imported once); each package that compiled is kept, and the first
    /// failure is the error.
    pub(super) fn run_compile_job(&self, spec: &CompileSpec, jobs: &[Job]) -> Result<()> {
        let Some(first) = jobs.first() else {
            return Ok(());
        };
        let script = scratch(&first.package, "compile.py");
        std::fs::write(&script, SCRIPT).map_err(|e| sd_core::CoreError::io(&script, e))?;
        let job = scratch(&first.package, "job.json");
        let specs: Vec<&serde_json::Value> = jobs.iter().map(|j| &j.spec).collect();
        let text = serde_json::json!({ "parts": specs }).to_string();
        std::fs::write(&job, text).map_err(|e| sd_core::CoreError::io(&job, e))?;
        // Inductor's own cache (kernels, the shared object with the weights
        // in it) would stay in /tmp/torchinductor_$USER: gigabytes a compile.
        // The package is what is kept; the cache goes with the job.
        let inductor = scratch(&first.package, "inductor");
        let out = std::process::Command::new(&spec.python)
            .arg(&script)
            .arg(&job)
            .env("TORCHINDUCTOR_CACHE_DIR", &inductor)
            .output();
        let out =
            out.map_err(|e| PipelineError::model(&spec.python, format!("cannot run it: {e}")))?;
        for leftover in [script, job] {
            let _ = std::fs::remove_file(leftover);
        }
        let _ = std::fs::remove_dir_all(&inductor);
        // (the script prints a line naming each package once it is whole)
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut all_there = true;
        for job in jobs {
            let package = &job.package;
            let _ = std::fs::remove_file(scratch(package, "weights.safetensors"));
            let written = job.partial();
            let done = stdout.lines().any(|line| {
                let line: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                line["package"].as_str().map(Path::new) == Some(&*written)
            });
            if done {
                std::fs::rename(&written, package)
                    .map_err(|e| sd_core::CoreError::io(package, e))?;
            }
            let _ = std::fs::remove_file(&written);
            all_there &= package.exists();
        }
        if !out.status.success() || !all_there {
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
