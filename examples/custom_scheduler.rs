//! A sampler of your own, outside the crate: implement `sd_scheduler::Scheduler`,
//! check it with a stand-in model that knows the clean sample (the run must
//! land on it), then plug it into the pipeline with `generate_with`. This one
//! is a plain Euler sampler on a uniform grid of sigmas, built from the
//! crate's schedule helpers.
//!
//! cargo run -p sd-examples --example custom_scheduler

use anyhow::Result;
use sd_core::rng::CpuGenerator;
use sd_scheduler::schedule::{self, BetaConfig, NoiseSchedule};
use sd_scheduler::{NoiseSource, Scheduler, SchedulerConfig, SchedulerError};
use tch::{Kind, Tensor};

/// Euler steps over sigmas evenly spaced between the largest and smallest
/// training sigma, then 0.
struct UniformEuler {
    training_sigmas: Vec<f32>,
    log_sigmas: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
}

impl UniformEuler {
    /// For the training schedule a model's scheduler config describes.
    fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        let schedule = NoiseSchedule::new(&BetaConfig::from_config(config))?;
        let training_sigmas = schedule.training_sigmas();
        let log_sigmas = training_sigmas.iter().map(|s| s.ln()).collect();
        Ok(UniformEuler {
            training_sigmas,
            log_sigmas,
            sigmas: Vec::new(),
            timesteps: Vec::new(),
        })
    }
}

impl Scheduler for UniformEuler {
    fn name(&self) -> &'static str {
        "uniform-euler"
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        if steps == 0 {
            return Err(SchedulerError::invalid("uniform-euler", "0 steps"));
        }
        let (min, max) = (
            self.training_sigmas[0] as f64,
            self.training_sigmas[999] as f64,
        );
        let sigmas = schedule::linspace(max, min, steps);
        self.timesteps = sigmas
            .iter()
            .map(|&s| schedule::sigma_to_t(s, &self.log_sigmas))
            .collect();
        self.sigmas = sigmas.iter().map(|&s| s as f32).chain([0.0]).collect();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.sigmas[0] as f64
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor, SchedulerError> {
        let sigma = self.sigmas[i] as f64;
        Ok(sample / (sigma * sigma + 1.0).sqrt())
    }

    fn step(
        &mut self,
        eps: &Tensor,
        i: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor, SchedulerError> {
        // dx/dsigma = eps for an epsilon-predicting model
        let dt = (self.sigmas[i + 1] - self.sigmas[i]) as f64;
        Ok(sample + eps * dt)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        i: usize,
    ) -> Result<Tensor, SchedulerError> {
        Ok(original + noise * self.sigmas[i] as f64)
    }
}

fn main() -> Result<()> {
    // The tiny random-weight demo model (its images are noise, but a run
    // goes through every component); its scheduler config gives the betas.
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../reference/fixtures/tiny-sd1"
    );
    let pipeline = sd_pipeline::StableDiffusion::builder()
        .model_dir(model)
        .build()?;
    let config = pipeline.scheduler_config();

    let mut generator = CpuGenerator::new(0)?;
    let clean = Tensor::linspace(-1.0, 1.0, 64, (Kind::Float, tch::Device::Cpu)).view([1, 4, 4, 4]);
    let mut scheduler: Box<dyn Scheduler> = Box::new(UniformEuler::new(config)?);
    scheduler.set_timesteps(25)?;
    let mut x = generator.randn(&[1, 4, 4, 4])? * scheduler.init_noise_sigma() + &clean;
    for i in 0..scheduler.timesteps().len() {
        let _input = scheduler.scale_model_input(&x, i)?; // what a UNet would see
                                                          // The stand-in model: exactly the noise separating the sample from `clean`.
        let sigma = scheduler.sigmas().expect("this sampler has sigmas")[i] as f64;
        let eps = (&x - &clean) / sigma;
        x = scheduler.step(&eps, i, &x, &mut generator)?;
    }
    let error = (&x - &clean).abs().max().double_value(&[]);
    println!("uniform-euler: 25 steps, max distance to the clean sample {error:.2e}");

    // The same sampler in the pipeline.
    let mut request = sd_pipeline::Request::new("a large blue triangle on a white background");
    request.steps = 10;
    let generation = pipeline.generate_with(
        &request,
        Box::new(UniformEuler::new(config)?),
        &mut |info| {
            println!(
                "step {}/{} at t = {:.1}",
                info.step + 1,
                info.total,
                info.timestep
            );
            std::ops::ControlFlow::Continue(())
        },
    )?;
    println!(
        "pipeline with uniform-euler: {} image(s) of {:?}",
        generation.images.len(),
        generation.images[0].dimensions()
    );
    Ok(())
}
