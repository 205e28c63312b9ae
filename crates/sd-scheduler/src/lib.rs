//! Diffusion samplers that match diffusers step for step, behind one public
//! [`Scheduler`] trait that your own samplers can implement too.
//!
//! A run owns its scheduler value: [`Scheduler::set_timesteps`] prepares it
//! and resets all per-run state, then the loop goes over the timesteps by
//! index (never by float equality):
//!
//! ```no_run
//! # use sd_scheduler::{build, SamplerKind, SchedulerConfig, Scheduler};
//! # use sd_core::rng::CpuGenerator;
//! # fn unet(x: &tch::Tensor, t: f64) -> tch::Tensor { x.shallow_clone() }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut scheduler = build(SamplerKind::Euler, &SchedulerConfig::stable_diffusion())?;
//! scheduler.set_timesteps(30)?;
//! let mut noise = CpuGenerator::new(0)?;
//! let mut latents = noise.randn(&[1, 4, 64, 64])? * scheduler.init_noise_sigma();
//! for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
//!     let input = scheduler.scale_model_input(&latents, i)?;
//!     let eps = unet(&input, t);
//!     latents = scheduler.step(&eps, i, &latents, &mut noise)?;
//! }
//! # Ok(()) }
//! ```
//!
//! Multi-stage samplers (Heun, KDPM2) list each model evaluation as its own
//! timestep, so the same loop drives them. The schedule math has one home,
//! [`schedule`]; each sampler is one file.
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod numpy;
mod prediction;
pub mod schedule;
mod sigmas;

mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod flow;
mod flow_euler;
mod flow_heun;
mod heun;
mod kdpm2;
mod lcm;
mod lms;
mod pndm;
mod unipc;

pub use config::{PredictionType, SchedulerConfig, TimeShiftType, TimestepSpacing};
pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpm_solver::DpmSolverMultistep;
pub use error::{Result, SchedulerError};
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use flow::flux_sigmas;
pub use flow_euler::FlowMatchEuler;
pub use flow_heun::FlowMatchHeun;
pub use heun::Heun;
pub use kdpm2::Kdpm2;
pub use lcm::Lcm;
pub use lms::Lms;
pub use pndm::Pndm;
pub use sd_core::rng::NoiseSource;
pub use unipc::UniPc;

use tch::Tensor;

/// A sampler: turns model outputs into the next, less noisy sample.
///
/// Implement it to plug your own sampler into the pipeline. Indices address
/// [`Scheduler::timesteps`]; a run calls `scale_model_input(i)` and `step(i)`
/// for each `i` in order, starting at 0 (or at an img2img start index).
pub trait Scheduler: Send {
    /// A short name for messages ("euler", "dpm++2m", ...).
    fn name(&self) -> &'static str;

    /// Prepares `num_inference_steps` steps and resets all per-run state.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The image's size in latent patches, for samplers whose schedule
    /// depends on it (flow matching with `use_dynamic_shifting`: SD3.5's
    /// and FLUX's `mu`); call it before [`set_timesteps`](Self::set_timesteps).
    /// Others ignore it (the default).
    fn set_image_seq_len(&mut self, seq_len: usize) {
        let _ = seq_len;
    }

    /// Prepares a custom, strictly descending list of training timesteps,
    /// for samplers that support one.
    fn set_custom_timesteps(&mut self, timesteps: &[f64]) -> Result<()> {
        let _ = timesteps;
        Err(SchedulerError::request(
            self.name(),
            "custom timesteps are not supported",
        ))
    }

    /// Sigmas for the next [`set_timesteps`](Self::set_timesteps) (as many
    /// as its steps), for samplers that take them: diffusers'
    /// `set_timesteps(sigmas=...)`, FLUX's `linspace(1, 1/n, n)`.
    fn set_custom_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        let _ = sigmas;
        Err(SchedulerError::request(
            self.name(),
            "custom sigmas are not supported",
        ))
    }

    /// The model's timestep at each step index (fractional where the
    /// sampler interpolates). Heun and KDPM2 list each model evaluation.
    fn timesteps(&self) -> &[f64];

    /// The sigma at each step index plus the final one, for samplers that
    /// work in sigmas (diffusers' `scheduler.sigmas`).
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }

    /// Model evaluations per sampler step: 2 for Heun and KDPM2, else 1.
    fn order(&self) -> usize {
        1
    }

    /// Scale of the initial noise: 1 (the default) for DDIM-like samplers,
    /// the largest sigma or more for sigma-based ones.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The model's input at step `step_index`; by default the sample itself.
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(self.name(), step_index, self.timesteps().len())?;
        Ok(sample.shallow_clone())
    }

    /// One step: the model's output at `step_index` and the current sample
    /// give the next sample. Stochastic samplers draw noise from `noise`.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor>;

    /// The forward process: `original` noised to the level of `step_index`
    /// (img2img and inpainting start here).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor>;

    /// The last step's prediction of the clean sample (diffusers'
    /// `pred_original_sample` / `denoised`), for samplers that make one:
    /// previews show it instead of the noisy sample. `None` by default.
    fn denoised(&self) -> Option<&Tensor> {
        None
    }
}

/// Every built-in sampler, by its CLI name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `ddim`: DDIM (eta 0 unless set).
    Ddim,
    /// `ddpm`: ancestral DDPM.
    Ddpm,
    /// `pndm`: PLMS.
    Pndm,
    /// `lms`: linear multistep.
    Lms,
    /// `euler`: Euler (k-diffusion).
    Euler,
    /// `euler-a`: Euler ancestral.
    EulerAncestral,
    /// `heun`: Heun (two evaluations per step).
    Heun,
    /// `dpm2`: KDPM2.
    Dpm2,
    /// `dpm2-a`: KDPM2 ancestral.
    Dpm2Ancestral,
    /// `dpm++2m`: DPM-Solver++ 2M.
    DpmPlusPlus2M,
    /// `dpm++2m-karras`: DPM-Solver++ 2M on Karras sigmas.
    DpmPlusPlus2MKarras,
    /// `dpm++2m-sde`: SDE DPM-Solver++ 2M.
    DpmPlusPlus2MSde,
    /// `unipc`: UniPC.
    UniPc,
    /// `lcm`: latent consistency (for LCM-distilled models).
    Lcm,
    /// `flow-euler`: Euler for flow-matching models (SD3, SD3.5).
    FlowEuler,
    /// `flow-heun`: Heun for flow-matching models.
    FlowHeun,
}

impl SamplerKind {
    /// Every sampler, in CLI order.
    pub const ALL: [SamplerKind; 14] = [
        SamplerKind::Ddim,
        SamplerKind::Ddpm,
        SamplerKind::Pndm,
        SamplerKind::Lms,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Heun,
        SamplerKind::Dpm2,
        SamplerKind::Dpm2Ancestral,
        SamplerKind::DpmPlusPlus2M,
        SamplerKind::DpmPlusPlus2MKarras,
        SamplerKind::DpmPlusPlus2MSde,
        SamplerKind::UniPc,
        SamplerKind::Lcm,
    ];

    /// The samplers of flow-matching models (SD3, SD3.5), which predict a
    /// velocity on a sigma schedule from 1 to 0, not noise on a beta schedule.
    pub const FLOW_MATCHING: [SamplerKind; 2] = [SamplerKind::FlowEuler, SamplerKind::FlowHeun];

    /// Their CLI names (of [`ALL`](Self::ALL)), in the same order.
    pub const NAMES: [&'static str; 14] = [
        "ddim",
        "ddpm",
        "pndm",
        "lms",
        "euler",
        "euler-a",
        "heun",
        "dpm2",
        "dpm2-a",
        "dpm++2m",
        "dpm++2m-karras",
        "dpm++2m-sde",
        "unipc",
        "lcm",
    ];

    /// The CLI name (`euler-a`, `dpm++2m`, `flow-euler`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::FlowEuler => "flow-euler",
            SamplerKind::FlowHeun => "flow-heun",
            other => {
                let index = Self::ALL
                    .iter()
                    .position(|&k| k == other)
                    .expect("every noise-prediction kind is listed");
                Self::NAMES[index]
            }
        }
    }

    /// Whether this is a flow-matching sampler (for SD3-like models).
    pub fn is_flow_matching(self) -> bool {
        Self::FLOW_MATCHING.contains(&self)
    }

    /// AUTOMATIC1111's names (its API's `sampler_name`), with the sampler
    /// each is here, in A1111's menu order.
    pub const A1111_NAMES: [(&'static str, SamplerKind); 14] = [
        ("Euler a", SamplerKind::EulerAncestral),
        ("Euler", SamplerKind::Euler),
        ("LMS", SamplerKind::Lms),
        ("Heun", SamplerKind::Heun),
        ("DPM2", SamplerKind::Dpm2),
        ("DPM2 a", SamplerKind::Dpm2Ancestral),
        ("DPM++ 2M", SamplerKind::DpmPlusPlus2M),
        ("DPM++ 2M Karras", SamplerKind::DpmPlusPlus2MKarras),
        ("DPM++ 2M SDE", SamplerKind::DpmPlusPlus2MSde),
        ("DDIM", SamplerKind::Ddim),
        ("PLMS", SamplerKind::Pndm),
        ("UniPC", SamplerKind::UniPc),
        ("LCM", SamplerKind::Lcm),
        ("DDPM", SamplerKind::Ddpm),
    ];

    /// A1111's name of this sampler ("Euler a", "DPM++ 2M", ...).
    pub fn a1111_name(self) -> &'static str {
        Self::A1111_NAMES
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or(self.name(), |(name, _)| name)
    }

    /// The sampler an A1111 name (any case) or a CLI name stands for.
    pub fn from_any_name(name: &str) -> Result<Self> {
        let name = name.trim();
        Self::A1111_NAMES
            .iter()
            .find(|(a1111, _)| a1111.eq_ignore_ascii_case(name))
            .map(|(_, kind)| Ok(*kind))
            .unwrap_or_else(|| name.parse())
    }

    /// The sampler of a diffusers class name (`_class_name` of a config).
    pub fn from_class_name(class: &str) -> Option<Self> {
        Some(match class {
            "DDIMScheduler" => SamplerKind::Ddim,
            "DDPMScheduler" => SamplerKind::Ddpm,
            "PNDMScheduler" => SamplerKind::Pndm,
            "LMSDiscreteScheduler" => SamplerKind::Lms,
            "EulerDiscreteScheduler" => SamplerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
            "HeunDiscreteScheduler" => SamplerKind::Heun,
            "KDPM2DiscreteScheduler" => SamplerKind::Dpm2,
            "KDPM2AncestralDiscreteScheduler" => SamplerKind::Dpm2Ancestral,
            "DPMSolverMultistepScheduler" => SamplerKind::DpmPlusPlus2M,
            "UniPCMultistepScheduler" => SamplerKind::UniPc,
            "LCMScheduler" => SamplerKind::Lcm,
            "FlowMatchEulerDiscreteScheduler" => SamplerKind::FlowEuler,
            "FlowMatchHeunDiscreteScheduler" => SamplerKind::FlowHeun,
            _ => return None,
        })
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = SchedulerError;

    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::FLOW_MATCHING)
            .find(|kind| kind.name() == name)
            .ok_or_else(|| SchedulerError::UnknownSampler(name.to_string()))
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds a sampler from a config, as diffusers' `Class.from_config(config)`:
/// keys the config has override the sampler's defaults; the DPM-Solver++
/// names also set their defining options (Karras sigmas, SDE variant).
pub fn build(kind: SamplerKind, config: &SchedulerConfig) -> Result<Box<dyn Scheduler>> {
    Ok(match kind {
        SamplerKind::Ddim => Box::new(Ddim::new(config)?),
        SamplerKind::Ddpm => Box::new(Ddpm::new(config)?),
        SamplerKind::Pndm => Box::new(Pndm::new(config)?),
        SamplerKind::Lms => Box::new(Lms::new(config)?),
        SamplerKind::Euler => Box::new(Euler::new(config)?),
        SamplerKind::EulerAncestral => Box::new(EulerAncestral::new(config)?),
        SamplerKind::Heun => Box::new(Heun::new(config)?),
        SamplerKind::Dpm2 => Box::new(Kdpm2::new(config)?),
        SamplerKind::Dpm2Ancestral => Box::new(Kdpm2::ancestral(config)?),
        SamplerKind::DpmPlusPlus2M => Box::new(DpmSolverMultistep::new(config, "dpm++2m")?),
        SamplerKind::DpmPlusPlus2MKarras => {
            let config = SchedulerConfig {
                use_karras_sigmas: Some(true),
                ..config.clone()
            };
            Box::new(DpmSolverMultistep::new(&config, "dpm++2m-karras")?)
        }
        SamplerKind::DpmPlusPlus2MSde => {
            let config = SchedulerConfig {
                algorithm_type: Some(config::AlgorithmType::SdeDpmSolverPlusPlus),
                ..config.clone()
            };
            Box::new(DpmSolverMultistep::new(&config, "dpm++2m-sde")?)
        }
        SamplerKind::UniPc => Box::new(UniPc::new(config)?),
        SamplerKind::Lcm => Box::new(Lcm::new(config)?),
        SamplerKind::FlowEuler => Box::new(FlowMatchEuler::new(config)?),
        SamplerKind::FlowHeun => Box::new(FlowMatchHeun::new(config)?),
    })
}

/// How diffusers' `get_timesteps` rounds `steps * strength`: the UNet
/// pipelines (SD1.x, SD2.x, SDXL) truncate the steps to run, the
/// flow-matching ones (SD3, FLUX) truncate the steps to skip: 4 steps at
/// strength 0.6 run 2 there and 3 here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StrengthRounding {
    /// `init = int(steps * strength)`; skip `steps - init`.
    RunSteps,
    /// skip `int(steps - steps * strength)`.
    SkipSteps,
}

/// Where img2img starts: diffusers' `get_timesteps` of the UNet pipelines.
/// With `strength` in (0, 1], the run skips the first
/// `steps - floor(steps * strength)` steps; the returned index is into
/// [`Scheduler::timesteps`] (times the order).
pub fn img2img_start_index(
    scheduler: &dyn Scheduler,
    num_inference_steps: usize,
    strength: f64,
) -> Result<usize> {
    img2img_start(
        scheduler,
        num_inference_steps,
        strength,
        StrengthRounding::RunSteps,
    )
}

/// Where img2img starts, with `rounding` as the model's pipeline rounds.
pub fn img2img_start(
    scheduler: &dyn Scheduler,
    num_inference_steps: usize,
    strength: f64,
    rounding: StrengthRounding,
) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(SchedulerError::request(
            scheduler.name(),
            format!("strength {strength} is outside (0, 1]"),
        ));
    }
    let steps = num_inference_steps as f64;
    let skipped = match rounding {
        StrengthRounding::RunSteps => {
            num_inference_steps - ((steps * strength) as usize).min(num_inference_steps)
        }
        StrengthRounding::SkipSteps => (steps - (steps * strength).min(steps)) as usize,
    };
    let start = skipped * scheduler.order();
    if start >= scheduler.timesteps().len() {
        return Err(SchedulerError::request(
            scheduler.name(),
            format!("strength {strength} with {num_inference_steps} steps leaves no step to run"),
        ));
    }
    Ok(start)
}

/// Checks a step count against the training timesteps.
pub(crate) fn check_steps(sampler: &'static str, steps: usize, num_train: usize) -> Result<()> {
    if steps == 0 {
        return Err(SchedulerError::request(
            sampler,
            "0 inference steps: at least 1 is needed",
        ));
    }
    if steps > num_train {
        return Err(SchedulerError::request(
            sampler,
            format!("{steps} inference steps is more than the {num_train} training timesteps"),
        ));
    }
    Ok(())
}

/// Checks an index against the prepared timesteps.
pub(crate) fn check_index(sampler: &'static str, index: usize, len: usize) -> Result<()> {
    if index >= len {
        return Err(SchedulerError::StepOutOfRange {
            sampler,
            index,
            len,
        });
    }
    Ok(())
}

/// Upcasts the model output like diffusers' `sample.to(float32)` steps do.
pub(crate) fn f32_like(tensor: &Tensor) -> Tensor {
    tensor.to_kind(tch::Kind::Float)
}

/// Noise shaped like `like`, drawn in its dtype as diffusers does (the
/// samplers pass the tensor diffusers takes the dtype from), then moved to
/// its device (queued, so a GPU loop does not wait at each stochastic step).
pub(crate) fn draw_noise(noise: &mut dyn NoiseSource, like: &Tensor) -> Result<Tensor> {
    let drawn = noise.randn_as(&like.size(), like.kind())?;
    Ok(sd_core::device::upload(&drawn, like.device())?)
}
