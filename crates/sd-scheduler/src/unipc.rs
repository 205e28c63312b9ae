//! UniPC (Zhao et al. 2023), multistep predictor-corrector in data (x0)
//! form, B(h) = bh1 or bh2: diffusers' `UniPCMultistepScheduler`. Orders 1
//! and 2 (the default); coefficients solved in f32 as diffusers does.

use tch::{Kind, Tensor};

use crate::config::{
    FinalSigmasType, PredictionType, SchedulerConfig, SolverType, TimestepSpacing,
};
use crate::dpm_solver::{alpha_sigma, alpha_sigma_add_noise, lambda};
use crate::error::{Result, SchedulerError};
use crate::prediction::x0_from_alpha_sigma;
use crate::schedule::{self, leading, NoiseSchedule};
use crate::{check_index, check_steps, sigmas, NoiseSource, Scheduler};

const NAME: &str = "unipc";

/// diffusers' `UniPCMultistepScheduler`.
#[derive(Debug)]
pub struct UniPc {
    schedule: NoiseSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: i64,
    bh2: bool,
    solver_order: usize,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    final_sigma: FinalSigmasType,
    karras: bool,
    exponential: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// Converted (x0) outputs of the last `solver_order` steps, newest last.
    outputs: Vec<Tensor>,
    last_sample: Option<Tensor>,
    this_order: usize,
    lower_order_nums: usize,
}

impl UniPc {
    /// The sampler configured from `config`; a value it cannot use is an error naming the field.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if config.predict_x0 == Some(false) {
            return Err(SchedulerError::config(
                "predict_x0",
                "only the data-prediction form (true) is implemented",
            ));
        }
        let bh2 = !matches!(config.solver_type, Some(SolverType::Bh1));
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=2).contains(&solver_order) {
            return Err(SchedulerError::config(
                "solver_order",
                format!("{solver_order}: orders 1 and 2 are implemented"),
            ));
        }
        let mut schedule = sigmas::noise_schedule(config, true)?;
        sigmas::clamp_terminal_alpha(&mut schedule, config);
        Ok(UniPc {
            schedule,
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset.unwrap_or(0),
            bh2,
            solver_order,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            disable_corrector: config.disable_corrector.clone().unwrap_or_default(),
            final_sigma: config.final_sigmas_type.unwrap_or(FinalSigmasType::Zero),
            karras: config.use_karras_sigmas == Some(true),
            exponential: config.use_exponential_sigmas == Some(true),
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            outputs: Vec::new(),
            last_sample: None,
            this_order: 1,
            lower_order_nums: 0,
        })
    }

    /// The UniPC update from sigma index `from` to `to` with data predictions
    /// `m0` (at `from`) and, for order 2, `m1` (at `earlier`). `corrector`
    /// is the model output at `to` for the corrector, None for the predictor.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        x: &Tensor,
        from: usize,
        to: usize,
        earlier: Option<(usize, &Tensor)>,
        m0: &Tensor,
        order: usize,
        corrector: Option<&Tensor>,
    ) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[to]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[from]);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        // 1. r_k and D1_k from the earlier output (order 2)
        let scalar = |v: f32| Tensor::from(v);
        let mut rks = Vec::new();
        let mut d1 = None;
        if let (Some((index, m1)), true) = (earlier, order >= 2) {
            let (alpha_si, sigma_si) = alpha_sigma(self.sigmas[index]);
            let rk = (lambda(alpha_si, sigma_si) - lambda_s0) / h;
            rks.push(scalar(rk));
            d1 = Some((m1 - m0) / rk as f64);
        }
        rks.push(Tensor::ones([], (Kind::Float, tch::Device::Cpu)));
        let rks = Tensor::stack(&rks, 0);
        // 2. phi functions and B(h), as 0-d f32 tensors (diffusers' arithmetic)
        let hh = scalar(-h);
        let h_phi_1 = hh.expm1();
        let mut h_phi_k = &h_phi_1 / &hh - 1.0;
        let b_h = if self.bh2 {
            hh.expm1()
        } else {
            hh.shallow_clone()
        };
        let mut factorial = 1i64;
        let (mut rows, mut b) = (Vec::new(), Vec::new());
        for k in 1..=order {
            rows.push(rks.pow_tensor_scalar((k - 1) as i64));
            b.push(&h_phi_k * factorial / &b_h);
            factorial *= k as i64 + 1;
            h_phi_k = &h_phi_k / &hh - 1.0 / factorial as f64;
        }
        let value = |t: &Tensor| t.double_value(&[]);
        let (h_phi_1, b_h) = (value(&h_phi_1) as f32, value(&b_h) as f32);
        // 3. x_t = sigma_t/sigma_s0 x - alpha_t h_phi_1 m0 - alpha_t B(h) (sum of
        //    rho-weighted differences), in the sample's dtype as diffusers: its
        //    coefficients lead (see `leading`) and its rhos are cast to that dtype.
        let base = x * leading(sigma_t / sigma_s0, x) - m0 * leading(alpha_t * h_phi_1, m0);
        let weight = alpha_t * b_h;
        let correction = match corrector {
            None => match d1 {
                Some(d1) => d1 * 0.5,
                None => return base,
            },
            Some(model_t) => {
                let rhos: Vec<f32> = if order == 1 {
                    vec![0.5]
                } else {
                    let r = Tensor::stack(&rows, 0);
                    let b = Tensor::stack(&b, 0);
                    Vec::try_from(Tensor::linalg_solve(&r, &b, true)).expect("1-d f32")
                };
                let d1_t = model_t - m0;
                let last = leading(rhos[rhos.len() - 1], &d1_t);
                match d1 {
                    Some(d1) => &d1 * leading(rhos[0], &d1) + d1_t * last,
                    None => d1_t * last,
                }
            }
        };
        base - &correction * leading(weight, &correction)
    }
}

impl Scheduler for UniPc {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let num_train = self.schedule.num_train_timesteps();
        check_steps(NAME, steps, num_train)?;
        let timesteps = schedule::multistep_timesteps(
            self.spacing,
            num_train as f64,
            num_train,
            steps,
            self.steps_offset,
        );
        let training = self.schedule.training_sigmas();
        let log_sigmas = self.schedule.log_sigmas();
        let (mut sigmas, timesteps) = if self.karras || self.exponential {
            let min = self.sigma_min.unwrap_or(training[0] as f64);
            let max = self.sigma_max.unwrap_or(training[num_train - 1] as f64);
            // UniPC always rounds its Karras timesteps.
            schedule::resampled_sigmas(self.karras, min, max, steps, &log_sigmas, true)
        } else {
            let sigmas = timesteps
                .iter()
                .map(|&t| schedule::interp(t, &training))
                .collect();
            (sigmas, timesteps)
        };
        let last = match (self.final_sigma, self.karras || self.exponential) {
            (FinalSigmasType::Zero, _) => 0.0,
            (FinalSigmasType::SigmaMin, true) => sigmas[sigmas.len() - 1],
            (FinalSigmasType::SigmaMin, false) => training[0] as f64,
        };
        sigmas.push(last);
        self.timesteps = timesteps.into_iter().map(f64::trunc).collect();
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.outputs.clear();
        self.last_sample = None;
        self.this_order = 1;
        self.lower_order_nums = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let len = self.timesteps.len();
        check_index(NAME, i, len)?;
        let (alpha_i, sigma_i) = alpha_sigma(self.sigmas[i]);
        let converted =
            x0_from_alpha_sigma(self.prediction, model_output, sample, alpha_i, sigma_i);
        // 1. corrector: refine the sample the last predictor produced
        let mut sample = sample.shallow_clone();
        if i > 0 && !self.disable_corrector.contains(&(i - 1)) {
            if let Some(last) = &self.last_sample {
                let n = self.outputs.len();
                let m0 = &self.outputs[n - 1];
                let earlier = (n >= 2 && i >= 2).then(|| (i - 2, &self.outputs[n - 2]));
                sample = self.update(
                    last,
                    i - 1,
                    i,
                    earlier,
                    m0,
                    self.this_order,
                    Some(&converted),
                );
            }
        }
        // 2. predictor from the corrected sample
        self.outputs.push(converted);
        if self.outputs.len() > self.solver_order {
            drop(self.outputs.remove(0));
        }
        let order = if self.lower_order_final {
            self.solver_order.min(len - i)
        } else {
            self.solver_order
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        // (diffusers' UniPC keeps the sample in the model's dtype: no upcast)
        self.last_sample = Some(sample.shallow_clone());
        let n = self.outputs.len();
        let earlier = (n >= 2 && i >= 1).then(|| (i - 1, &self.outputs[n - 2]));
        let prev = self.update(
            &sample,
            i,
            i + 1,
            earlier,
            &self.outputs[n - 1],
            self.this_order,
            None,
        );
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(prev.to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_index(NAME, step_index, self.timesteps.len())?;
        Ok(alpha_sigma_add_noise(
            original,
            noise,
            self.sigmas[step_index],
        ))
    }
}
