//! DPM-Solver-2 in Karras form (Karras et al. 2022; k-diffusion's
//! `sample_dpm_2` and `sample_dpm_2_ancestral`): diffusers'
//! `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler`. Each step
//! evaluates the model at sigma and at a log-midpoint sigma, so the timestep
//! list holds both: t0, t_mid1, t1, t_mid2, t2, ...

use tch::Tensor;

use crate::config::{PredictionType, SchedulerConfig};
use crate::error::Result;
use crate::prediction::{require, x0_from_sigma};
use crate::schedule::{self, NoiseSchedule};
use crate::sigmas::{self, SigmaRecipe};
use crate::{check_index, check_steps, draw_noise, NoiseSource, Scheduler};

/// The per-evaluation tables both variants use (diffusers' layout).
#[derive(Debug, Default)]
struct Tables {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    /// Ancestral only.
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
}

/// `[v0, v1, v1, v2, v2, ..., vn, vn, vn]`: diffusers' `cat(v[:1], v[1:].repeat_interleave(2), v[-1:])`.
fn doubled(values: &Tensor) -> Vec<f32> {
    let v: Vec<f32> = Vec::try_from(values).expect("1-d f32");
    let mut out = vec![v[0]];
    for &x in &v[1..] {
        out.push(x);
        out.push(x);
    }
    out.push(v[v.len() - 1]);
    out
}

/// log-space midpoint of two sigma tables, exp(lerp(log a, log b, 0.5)), in torch's f32 ops.
fn log_midpoint(a: &Tensor, b: &Tensor) -> Tensor {
    a.log().lerp(&b.log(), 0.5).exp()
}

struct Common {
    schedule: NoiseSchedule,
    recipe: SigmaRecipe,
    prediction: PredictionType,
}

impl Common {
    fn new(name: &'static str, config: &SchedulerConfig) -> Result<Self> {
        let mut recipe = SigmaRecipe::from_config(config, true)?;
        recipe.round_karras_timesteps = true;
        recipe.f32_timesteps = false;
        let prediction = config.prediction_type.unwrap_or(PredictionType::Epsilon);
        Ok(Common {
            schedule: sigmas::noise_schedule(config, false)?,
            recipe,
            prediction: require(
                name,
                prediction,
                &[PredictionType::Epsilon, PredictionType::VPrediction],
            )?,
        })
    }

    fn tables(&self, name: &'static str, steps: usize, ancestral: bool) -> Result<Tables> {
        check_steps(name, steps, self.schedule.num_train_timesteps())?;
        let base = sigmas::sigma_steps(&self.schedule, steps, &self.recipe);
        let log_sigmas = self.schedule.log_sigmas();
        let s = Tensor::from_slice(&base.sigmas);
        let n = base.sigmas.len() as i64;
        let (interpol, up, down) = if ancestral {
            let next = s.roll([-1], [0]);
            let _ = next.get(n - 1).fill_(0.0);
            let up =
                (next.square() * (s.square() - next.square()) / s.square()).pow_tensor_scalar(0.5);
            let down = (next.square() - up.square()).pow_tensor_scalar(0.5);
            let _ = down.get(n - 1).fill_(0.0);
            let interpol = log_midpoint(&s, &down);
            let _ = interpol.narrow(0, n - 2, 2).fill_(0.0);
            (interpol, Some(up), Some(down))
        } else {
            (log_midpoint(&s, &s.roll([1], [0])), None, None)
        };
        let interpol_t: Vec<f64> = Vec::<f32>::try_from(&interpol)
            .expect("1-d f32")
            .iter()
            .map(|&x| schedule::sigma_to_t_f32(x, &log_sigmas))
            .collect();
        // t0, then (midpoint, next) pairs.
        let t = &base.timesteps;
        let mid = if ancestral {
            &interpol_t[..interpol_t.len() - 2]
        } else {
            &interpol_t[1..interpol_t.len() - 1]
        };
        let mut timesteps = vec![t[0]];
        for (m, next) in mid.iter().zip(&t[1..]) {
            timesteps.push(*m);
            timesteps.push(*next);
        }
        if !(self.recipe.karras || self.recipe.exponential) {
            // diffusers casts the midpoints to the f32 dtype of the spaced timesteps.
            timesteps.iter_mut().for_each(|t| *t = *t as f32 as f64);
        }
        Ok(Tables {
            timesteps,
            sigmas: doubled(&s),
            sigmas_interpol: doubled(&interpol),
            sigmas_up: up.as_ref().map(doubled).unwrap_or_default(),
            sigmas_down: down.as_ref().map(doubled).unwrap_or_default(),
        })
    }
}

/// diffusers' `KDPM2DiscreteScheduler` ([`Kdpm2::new`]) and
/// `KDPM2AncestralDiscreteScheduler` ([`Kdpm2::ancestral`]).
pub struct Kdpm2 {
    name: &'static str,
    /// The ancestral variant steps down to sigma_down and adds fresh noise.
    ancestral: bool,
    common: Common,
    tables: Tables,
    /// The sample a step started from, between its two evaluations.
    pending: Option<Tensor>,
}

impl Kdpm2 {
    /// The deterministic sampler (`dpm2`).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        Self::variant("dpm2", false, config)
    }

    /// The ancestral sampler (`dpm2-a`).
    pub fn ancestral(config: &SchedulerConfig) -> Result<Self> {
        Self::variant("dpm2-a", true, config)
    }

    fn variant(name: &'static str, ancestral: bool, config: &SchedulerConfig) -> Result<Self> {
        Ok(Kdpm2 {
            name,
            ancestral,
            common: Common::new(name, config)?,
            tables: Tables::default(),
            pending: None,
        })
    }
}

impl Scheduler for Kdpm2 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn timesteps(&self) -> &[f64] {
        &self.tables.timesteps
    }

    fn order(&self) -> usize {
        2
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.tables.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        sigmas::init_noise_sigma(&self.tables.sigmas, self.common.recipe.spacing)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(self.name, step_index, self.tables.timesteps.len())?;
        Ok(sigmas::add_noise(
            original,
            noise,
            self.tables.sigmas[step_index],
        ))
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.tables = self
            .common
            .tables(self.name, num_inference_steps, self.ancestral)?;
        self.pending = None;
        Ok(())
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        check_index(self.name, i, self.tables.timesteps.len())?;
        // The midpoint evaluation's sigma sits one entry later in the
        // deterministic tables than in the ancestral ones (diffusers' layout).
        let sigma = match (&self.pending, self.ancestral) {
            (None, _) => self.tables.sigmas[i],
            (Some(_), false) => self.tables.sigmas_interpol[i],
            (Some(_), true) => self.tables.sigmas_interpol[i - 1],
        };
        Ok(sigmas::scale_input(sample, sigma))
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(self.name, i, self.tables.timesteps.len())?;
        let t = &self.tables;
        let prediction = self.common.prediction;
        match self.pending.take() {
            // 1. first evaluation: Euler step from sigma down to the midpoint sigma
            None => {
                let sigma = t.sigmas[i];
                let interpol = if self.ancestral {
                    t.sigmas_interpol[i]
                } else {
                    t.sigmas_interpol[i + 1]
                };
                let x0 = x0_from_sigma(prediction, model_output, sample, sigma);
                let derivative = (sample - x0) / sigma as f64;
                self.pending = Some(sample.shallow_clone());
                Ok(sample + derivative * (interpol - sigma) as f64)
            }
            // 2a. second evaluation (at the midpoint): the full step with its slope
            Some(start) if !self.ancestral => {
                let (sigma, interpol, next) = (t.sigmas[i - 1], t.sigmas_interpol[i], t.sigmas[i]);
                let x0 = x0_from_sigma(prediction, model_output, sample, interpol);
                let derivative = (sample - x0) / interpol as f64;
                Ok(start + derivative * (next - sigma) as f64)
            }
            // 2b. ancestral: step to sigma_down, then noise up by sigma_up
            Some(start) => {
                let j = i - 1;
                let (sigma, interpol) = (t.sigmas[j], t.sigmas_interpol[j]);
                let (up, down) = (t.sigmas_up[j], t.sigmas_down[j]);
                let x0 = x0_from_sigma(prediction, model_output, sample, interpol);
                let derivative = (sample - x0) / interpol as f64;
                let prev = start + derivative * (down - sigma) as f64;
                Ok(prev + draw_noise(noise, model_output)? * up as f64)
            }
        }
    }
}
