//! The schedule math every sampler shares, in one place: betas and
//! `alphas_cumprod`, timestep spacing, sigmas, Karras/exponential sigmas,
//! with the numpy helpers they are defined by re-exported from [`crate::numpy`].
//!
//! Numbers follow diffusers' own dtypes so results agree to the last digit:
//! betas and `alphas_cumprod` are f32 tensors computed by libtorch exactly as
//! torch computes them; the host-side numpy parts are f64, cast to f32 where
//! diffusers casts.

use tch::{Device, Kind, Tensor};

use crate::config::{BetaSchedule, TimestepSpacing};
use crate::error::{Result, SchedulerError};
pub use crate::numpy::{arange, interp, linspace, round};

/// Betas and their cumulative alpha products over the training timesteps.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// beta_t for each training timestep.
    pub betas: Vec<f32>,
    /// The cumulative products of (1 - beta_t), in f32 as diffusers keeps them.
    pub alphas_cumprod: Vec<f32>,
}

/// What defines a [`NoiseSchedule`], resolved from a config.
#[derive(Debug, Clone, PartialEq)]
pub struct BetaConfig {
    /// Training timesteps (1000).
    pub num_train_timesteps: usize,
    /// beta at the first timestep.
    pub beta_start: f64,
    /// beta at the last timestep.
    pub beta_end: f64,
    /// How betas run from start to end.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding the schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// Rescale to zero terminal SNR (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
}

impl BetaConfig {
    /// The betas a model's scheduler config describes (what a sampler of
    /// your own reads from `StableDiffusion::scheduler_config()`), with
    /// diffusers' DDPM defaults for keys it lacks: 1000 steps, linear from
    /// 0.0001 to 0.02.
    pub fn from_config(config: &crate::SchedulerConfig) -> Self {
        BetaConfig {
            num_train_timesteps: config.num_train_timesteps.unwrap_or(1000),
            beta_start: config.beta_start.unwrap_or(0.0001),
            beta_end: config.beta_end.unwrap_or(0.02),
            beta_schedule: config.beta_schedule.unwrap_or(BetaSchedule::Linear),
            trained_betas: config.trained_betas.clone(),
            rescale_betas_zero_snr: config.rescale_betas_zero_snr == Some(true),
        }
    }
}

impl NoiseSchedule {
    /// The training schedule of `config`.
    pub fn new(config: &BetaConfig) -> Result<Self> {
        let n = config.num_train_timesteps;
        if n < 2 {
            return Err(SchedulerError::config(
                "num_train_timesteps",
                format!("{n} is fewer than 2"),
            ));
        }
        let f32_cpu = (Kind::Float, Device::Cpu);
        let mut betas = match (&config.trained_betas, config.beta_schedule) {
            (Some(trained), _) => {
                if trained.len() != n {
                    return Err(SchedulerError::config(
                        "trained_betas",
                        format!("{} values for {n} training timesteps", trained.len()),
                    ));
                }
                let values: Vec<f32> = trained.iter().map(|&b| b as f32).collect();
                Tensor::from_slice(&values)
            }
            (None, BetaSchedule::Linear) => {
                Tensor::linspace(config.beta_start, config.beta_end, n as i64, f32_cpu)
            }
            (None, BetaSchedule::ScaledLinear) => Tensor::linspace(
                config.beta_start.sqrt(),
                config.beta_end.sqrt(),
                n as i64,
                f32_cpu,
            )
            .pow_tensor_scalar(2),
            (None, BetaSchedule::SquaredcosCapV2) => Tensor::from_slice(&cosine_betas(n)),
        };
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas_cumprod = (-&betas + 1.0).cumprod(0, Kind::Float);
        Ok(NoiseSchedule {
            betas: to_vec(&betas),
            alphas_cumprod: to_vec(&alphas_cumprod),
        })
    }

    /// Training timesteps.
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `alphas_cumprod[t]`, or `final_alpha` past the start (t < 0).
    pub fn alpha_prod(&self, t: i64, final_alpha: f32) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            final_alpha
        }
    }

    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`, f32 computed by
    /// torch's kernels on the whole array as diffusers does, indexed by
    /// training timestep (ascending).
    pub fn training_sigmas(&self) -> Vec<f32> {
        let alphas = Tensor::from_slice(&self.alphas_cumprod);
        to_vec(&((-&alphas + 1.0) / &alphas).sqrt())
    }

    /// `np.log` of [`NoiseSchedule::training_sigmas`]: diffusers takes the
    /// log of the f32 table with numpy, hence [`crate::numpy::log_f32`].
    pub fn log_sigmas(&self) -> Vec<f32> {
        self.training_sigmas()
            .into_iter()
            .map(crate::numpy::log_f32)
            .collect()
    }
}

/// The `squaredcos_cap_v2` (cosine) schedule: betas from alpha-bar(t).
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Rescales betas so the last timestep has zero SNR (Lin et al. 2023), the
/// `rescale_betas_zero_snr` option, with torch's f32 ops in diffusers' order.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Tensor {
    let alphas_cumprod = (-betas + 1.0).cumprod(0, Kind::Float);
    let sqrt = alphas_cumprod.sqrt();
    let first = sqrt.get(0);
    let last = sqrt.get(-1);
    let shifted = &sqrt - &last;
    let scaled = shifted * (&first / (&first - &last));
    let alphas_bar = scaled.pow_tensor_scalar(2);
    let n = alphas_bar.size()[0];
    let alphas = alphas_bar.narrow(0, 1, n - 1) / alphas_bar.narrow(0, 0, n - 1);
    let alphas = Tensor::cat(&[alphas_bar.narrow(0, 0, 1), alphas], 0);
    -alphas + 1.0
}

fn to_vec(tensor: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(tensor.contiguous()).expect("a 1-d f32 CPU tensor")
}

/// Which way a sampler spaces its timesteps, and how it rounds them.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    num_steps: usize,
    steps_offset: i64,
    round_linspace: bool,
) -> Vec<f64> {
    let n_train = num_train as f64;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t = linspace(0.0, n_train - 1.0, num_steps);
            if round_linspace {
                t.iter_mut().for_each(|x| *x = round(*x));
            }
            t.reverse();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = num_train / num_steps;
            (0..num_steps)
                .rev()
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = n_train / num_steps as f64;
            arange(n_train, 0.0, -ratio)
                .into_iter()
                .map(|x| round(x) - 1.0)
                .collect()
        }
    }
}

/// The multistep solvers' spacing (DPM-Solver++, UniPC): `num_steps + 1`
/// points below `last` (the training length, or less when the tail is
/// clipped), dropping the one at 0.
pub fn multistep_timesteps(
    spacing: TimestepSpacing,
    last: f64,
    num_train: usize,
    num_steps: usize,
    steps_offset: i64,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<f64> = linspace(0.0, last - 1.0, num_steps + 1)
                .into_iter()
                .map(round)
                .collect();
            t.reverse();
            t.pop();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = (last as usize / (num_steps + 1)) as f64;
            (1..=num_steps)
                .rev()
                .map(|i| i as f64 * ratio + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange(last, 0.0, -(num_train as f64 / num_steps as f64))
            .into_iter()
            .map(|t| round(t) - 1.0)
            .collect(),
    }
}

/// Karras (or else exponential) sigmas between `sigma_min` and `sigma_max`,
/// with the fractional training timesteps they fall on; Karras timesteps are
/// rounded when `round_karras_timesteps`. Returns `(sigmas, timesteps)`.
pub fn resampled_sigmas(
    karras: bool,
    sigma_min: f64,
    sigma_max: f64,
    num_steps: usize,
    log_sigmas: &[f32],
    round_karras_timesteps: bool,
) -> (Vec<f64>, Vec<f64>) {
    let sigmas = if karras {
        karras_sigmas(sigma_min, sigma_max, num_steps)
    } else {
        exponential_sigmas(sigma_min, sigma_max, num_steps)
    };
    let mut timesteps: Vec<f64> = sigmas.iter().map(|&s| sigma_to_t(s, log_sigmas)).collect();
    if karras && round_karras_timesteps {
        timesteps.iter_mut().for_each(|t| *t = round(*t));
    }
    (sigmas, timesteps)
}

/// Karras et al. (2022) sigmas: rho = 7 between `sigma_max` and `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, num_steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, num_steps)
        .into_iter()
        .map(|ramp| (max_inv + ramp * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Sigmas evenly spaced in log space from `sigma_max` down to `sigma_min`.
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, num_steps: usize) -> Vec<f64> {
    linspace(sigma_max.ln(), sigma_min.ln(), num_steps)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// The fractional training timestep whose sigma is `sigma`, by linear
/// interpolation in log-sigma (diffusers' `_sigma_to_t`). `log_sigmas` are
/// the f32 logs of [`NoiseSchedule::training_sigmas`].
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let low_idx = knot_below(log_sigma, log_sigmas);
    let (low, high) = (log_sigmas[low_idx] as f64, log_sigmas[low_idx + 1] as f64);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// [`sigma_to_t`] for an f32 sigma held in a torch tensor, as KDPM2 calls
/// diffusers' `_sigma_to_t` on its interpolated sigmas: numpy's functions
/// applied to a torch tensor hand back torch tensors, so the log, the
/// weight and the blend are all f32.
pub fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f64 {
    let log_sigma = crate::numpy::log_f32(sigma.max(1e-10));
    let low_idx = knot_below(log_sigma as f64, log_sigmas);
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    ((1.0 - w) * low_idx as f32 + w * (low_idx + 1) as f32) as f64
}

/// The last knot whose log-sigma is at or below `log_sigma`, capped so a
/// knot above it exists.
fn knot_below(log_sigma: f64, log_sigmas: &[f32]) -> usize {
    let below = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0);
    below.min(log_sigmas.len() - 2)
}

/// A coefficient as PyTorch applies it in diffusers' `coef * tensor` with
/// `coef` a 0-d f32 tensor (an `alphas_cumprod[t] ** 0.5`, a sigma): the
/// leading 0-d tensor is first cast to the tensor's dtype, so in f16/bf16
/// runs the coefficient is rounded to that format, while `tensor * coef` and
/// `tensor / coef` keep it in f32. Multiply as `tensor * leading(coef, &tensor)`
/// where diffusers puts the coefficient first. In f32 runs it is `coef`.
pub fn leading(coef: f32, tensor: &Tensor) -> f64 {
    scalar_like(coef, tensor).double_value(&[])
}

/// `value` as a 0-d CPU tensor of `tensor`'s half-precision dtype (else
/// f32): diffusers' `add_noise` first casts its schedule to the samples'
/// dtype and computes the coefficients in it, which this lets code mirror.
pub fn scalar_like(value: f32, tensor: &Tensor) -> Tensor {
    let scalar = Tensor::from(value);
    match tensor.kind() {
        kind @ (Kind::Half | Kind::BFloat16) => scalar.to_kind(kind),
        _ => scalar,
    }
}

// --- torch's f32 kernels, for what diffusers computes on 0-d tensors ------
//
// libtorch's `sqrt`, `log`, `exp` and `expm1` on f32 are not correctly
// rounded, and which kernel runs depends on the CPU (MKL's vector maths,
// SLEEF, by ISA): `torch.sqrt(16777215.)` is 4096 on some machines and
// 4095.9998 (the correctly rounded value, what Rust's `f32::sqrt` gives) on
// others. Wherever diffusers writes `x ** 0.5`, `.sqrt()`, `torch.log` or
// `torch.exp` on a tensor, we call the same kernel through these, so both
// sides round alike on every CPU. Plain `+ - * /` are exact IEEE operations
// everywhere and stay host arithmetic.

/// `x ** 0.5` on an f32 tensor (torch dispatches the 0.5 power to `sqrt`).
pub fn sqrt32(x: f32) -> f32 {
    Tensor::from(x).sqrt().double_value(&[]) as f32
}

/// f32 `ln`, `exp` and `expm1` through libtorch's kernels, so scalar
/// coefficients equal those diffusers computes on 0-d f32 tensors.
pub fn ln32(x: f32) -> f32 {
    Tensor::from(x).log().double_value(&[]) as f32
}

/// torch's f32 `exp` of one value (libtorch's kernel, not the host's).
pub fn exp32(x: f32) -> f32 {
    Tensor::from(x).exp().double_value(&[]) as f32
}

/// torch's f32 `expm1` of one value (libtorch's kernel).
pub fn expm1_32(x: f32) -> f32 {
    Tensor::from(x).expm1().double_value(&[]) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacings_match_diffusers_formulas() {
        use TimestepSpacing::*;
        assert_eq!(
            spaced_timesteps(Leading, 1000, 4, 1, true),
            vec![751.0, 501.0, 251.0, 1.0]
        );
        assert_eq!(
            spaced_timesteps(Trailing, 1000, 4, 1, true),
            vec![999.0, 749.0, 499.0, 249.0]
        );
        assert_eq!(
            spaced_timesteps(Linspace, 1000, 3, 1, true),
            vec![999.0, 500.0, 0.0]
        );
        assert_eq!(
            spaced_timesteps(Linspace, 1000, 3, 1, false),
            vec![999.0, 499.5, 0.0]
        );
    }

    #[test]
    fn sigma_to_t_inverts_training_sigmas() {
        let schedule = NoiseSchedule::new(&BetaConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            rescale_betas_zero_snr: false,
        })
        .unwrap();
        let sigmas = schedule.training_sigmas();
        let logs = schedule.log_sigmas();
        for t in [0usize, 1, 500, 998, 999] {
            assert!(
                (sigma_to_t(sigmas[t] as f64, &logs) - t as f64).abs() < 1e-3,
                "t={t}"
            );
        }
    }
}
