//! Numeric parity with reference outputs.
//!
//! A comparison reports the largest absolute error, the largest error
//! relative to the reference's own scale (`max|a - e| / max|e|`), and the
//! worst element against an `allclose`-style bound `|a - e| <= atol + rtol * |e|`.
//! Tests state their tolerance and fail with all of it printed.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use tch::{Kind, Tensor};

use sd_core::{CoreError, Result};

/// Allowed error: an element passes when `|a - e| <= atol + rtol * |e|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    /// Absolute error only.
    pub const fn abs(atol: f64) -> Self {
        Tolerance { atol, rtol: 0.0 }
    }
}

// --- the error model ------------------------------------------------------
//
// The reference outputs were written by diffusers on one machine; the tests
// run on any other. libtorch, MKL, oneDNN and numpy pick their kernels by
// CPU (vector width, FMA, transcendental implementations, GEMM and
// convolution blocking), so one kernel's result may move by a few units in
// the last place between machines, and the sampling chain carries every such
// difference on to the end. The model (docs/reference.md):
//
//   |actual - expected| <= K(dtype) * eps(dtype) * S * N
//
// eps is the dtype's machine epsilon (one ulp at 1.0), S the scale of the values the chain
// computes with (the reference's largest magnitude), N the number of model
// evaluations in the chain (1 for one forward pass), and K the budget of
// last-place differences one evaluation may add: 32 in f32 (a forward pass
// is about thirty kernels deep, each may round differently by an ulp), 4 in
// f16/bf16 (the kernels accumulate in f32, so the half-precision output
// moves by at most one or two of its much larger ulps).
//
// With `SD_PARITY=exact` (scripts/parity.sh --same-machine, after
// regenerating the references on this machine) every bound is 0: on one
// machine the Rust crates call the same kernels in the same order as
// diffusers, and must agree bit for bit.

/// Machine epsilon of a dtype: the distance from 1 to the next number, one
/// ulp at 1.0 (2^-23 in f32, 2^-10 in f16, 2^-7 in bf16).
pub fn epsilon(kind: Kind) -> f64 {
    match kind {
        Kind::Half => 2f64.powi(-10),
        Kind::BFloat16 => 2f64.powi(-7),
        Kind::Double => 2f64.powi(-52),
        _ => 2f64.powi(-23),
    }
}

/// K of the error model: last-place differences one model evaluation may add.
pub fn ulps_per_evaluation(kind: Kind) -> f64 {
    match kind {
        Kind::Half | Kind::BFloat16 => 4.0,
        _ => 32.0,
    }
}

/// Whether a case refused by libtorch ([`sd_core::CoreError::KernelUnavailable`])
/// is skipped rather than failed: only where the sweep (scripts/sweep.sh)
/// forces a CPU kernel path with `SD_PARITY_SKIP_REFUSED=1`, since libtorch
/// itself (and so diffusers) cannot run that dtype there. Prints the
/// `parity: skipped` line the sweep collects. At the CPU's own kernel path
/// a refusal is a failure like any other.
pub fn skip_refused(case: &str, error: &CoreError) -> bool {
    let refused = matches!(error, CoreError::KernelUnavailable { .. });
    let allowed = std::env::var("SD_PARITY_SKIP_REFUSED").is_ok_and(|v| v == "1");
    if refused && allowed {
        println!("parity: skipped {case}: {error}");
    }
    refused && allowed
}

/// `SD_PARITY_SIMULATE_REFUSAL=bf16` (or f16) makes this process answer as
/// libtorch does on a CPU that refuses that dtype's attention (Sapphire
/// Rapids under a forced capability), so that the sweep's handling of it
/// can be rehearsed on any CPU: `SD_PARITY_SIMULATE_REFUSAL=bf16
/// SD_PARITY_SKIP_REFUSED=1 cargo test -p sd-pipeline --test parity`.
pub fn simulate_refusal_from_env() {
    if let Ok(dtype) = std::env::var("SD_PARITY_SIMULATE_REFUSAL") {
        let kind =
            sd_core::device::parse_dtype(&dtype).expect("SD_PARITY_SIMULATE_REFUSAL: f16 or bf16");
        sd_core::kernels::simulate_refusal(
            kind,
            "pack_vnni2 is only supported when avx512 is supported (simulated)",
        );
    }
}

/// True when `SD_PARITY=exact`: references regenerated on this machine, so
/// every comparison must be bit for bit.
pub fn exact_mode() -> bool {
    std::env::var("SD_PARITY").is_ok_and(|v| v == "exact")
}

/// The error model's bound for a chain of `evaluations` model evaluations in
/// `kind` whose values reach magnitude `scale` (0 in exact mode).
pub fn chain_tolerance(kind: Kind, evaluations: usize, scale: f64) -> Tolerance {
    if exact_mode() {
        return Tolerance::abs(0.0);
    }
    Tolerance::abs(ulps_per_evaluation(kind) * epsilon(kind) * scale * evaluations.max(1) as f64)
}

/// [`chain_tolerance`] with the scale taken from the reference itself.
pub fn chain_tolerance_for(kind: Kind, evaluations: usize, expected: &Tensor) -> Tolerance {
    chain_tolerance(kind, evaluations, max_abs(expected))
}

/// The largest finite magnitude of a tensor.
pub fn max_abs(tensor: &Tensor) -> f64 {
    tensor
        .to_kind(Kind::Double)
        .abs()
        .nan_to_num(0.0, 0.0, 0.0)
        .max()
        .double_value(&[])
}

/// How many 8-bit levels a decoded image may move: the VAE is one evaluation
/// on values of scale 1 mapped to 0..255, plus one level for a value that
/// lands on the other side of a rounding boundary. (Not 0 in exact mode: a
/// decode of latents in another memory layout than diffusers' rounds
/// otherwise too.)
pub fn pixel_tolerance(kind: Kind) -> u8 {
    1 + (255.0 * ulps_per_evaluation(kind) * epsilon(kind)).floor() as u8
}

/// The result of comparing an output with its reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub shape: Vec<i64>,
    pub max_abs: f64,
    /// `max_abs` over the reference's largest magnitude.
    pub max_rel: f64,
    /// Index (flattened) of the element with the largest absolute error.
    pub worst_index: i64,
    pub worst_actual: f64,
    pub worst_expected: f64,
    /// Elements outside the tolerance, when one was given.
    pub failing: i64,
    pub nonfinite: i64,
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shape {:?}: max abs error {:.3e}, relative {:.3e}, worst at flat index {} (actual {:.7}, expected {:.7}), {} elements beyond tolerance, {} non-finite",
            self.shape,
            self.max_abs,
            self.max_rel,
            self.worst_index,
            self.worst_actual,
            self.worst_expected,
            self.failing,
            self.nonfinite
        )
    }
}

/// Compares two tensors in f64 on the CPU. Shapes must be equal.
pub fn compare(actual: &Tensor, expected: &Tensor, tolerance: Tolerance) -> Result<Comparison> {
    if actual.size() != expected.size() {
        return Err(CoreError::invalid(
            "parity",
            format!(
                "shape {:?} differs from the reference's {:?}",
                actual.size(),
                expected.size()
            ),
        ));
    }
    let a = actual
        .f_to_kind(Kind::Double)?
        .f_to_device(tch::Device::Cpu)?
        .f_flatten(0, -1)?;
    let e = expected
        .f_to_kind(Kind::Double)?
        .f_to_device(tch::Device::Cpu)?
        .f_flatten(0, -1)?;
    // Identical non-finite values (both +inf, both NaN) agree: the reference
    // itself overflows there. Any other non-finite value is a failure.
    let same = a
        .eq_tensor(&e)
        .logical_or(&a.isnan().logical_and(&e.isnan()));
    let nonfinite = a
        .isfinite()
        .logical_not()
        .logical_and(&same.logical_not())
        .sum(Kind::Int64)
        .int64_value(&[]);
    let diff = (&a - &e)
        .abs()
        .nan_to_num(f64::INFINITY, f64::INFINITY, f64::INFINITY)
        .masked_fill(&same, 0.0);
    if a.numel() == 0 {
        return Ok(Comparison {
            shape: actual.size(),
            max_abs: 0.0,
            max_rel: 0.0,
            worst_index: 0,
            worst_actual: 0.0,
            worst_expected: 0.0,
            failing: 0,
            nonfinite: 0,
        });
    }
    let worst_index = diff.argmax(None, false).int64_value(&[]);
    let max_abs = diff.double_value(&[worst_index]);
    let scale = e.abs().nan_to_num(0.0, 0.0, 0.0).max().double_value(&[]);
    let bound = e.abs() * tolerance.rtol + tolerance.atol;
    let failing = diff.gt_tensor(&bound).sum(Kind::Int64).int64_value(&[]);
    Ok(Comparison {
        shape: actual.size(),
        max_abs,
        max_rel: if scale > 0.0 {
            max_abs / scale
        } else {
            max_abs
        },
        worst_index,
        worst_actual: a.double_value(&[worst_index]),
        worst_expected: e.double_value(&[worst_index]),
        failing,
        nonfinite,
    })
}

/// Compares and fails when any element is outside `tolerance` or not finite.
/// The error message carries the whole [`Comparison`].
pub fn check_close(
    name: &str,
    actual: &Tensor,
    expected: &Tensor,
    tolerance: Tolerance,
) -> Result<Comparison> {
    let comparison = compare(actual, expected, tolerance)
        .map_err(|e| CoreError::invalid(name, e.to_string()))?;
    if comparison.failing > 0 || comparison.nonfinite > 0 {
        return Err(CoreError::invalid(
            name,
            format!(
                "{comparison} (tolerance atol {:e}, rtol {:e})",
                tolerance.atol, tolerance.rtol
            ),
        ));
    }
    Ok(comparison)
}

/// Test helper: [`check_close`] that panics with the report, and prints it
/// on success too (visible with `--nocapture`), with the bound it met.
#[track_caller]
pub fn assert_close(name: &str, actual: &Tensor, expected: &Tensor, tolerance: Tolerance) {
    match check_close(name, actual, expected, tolerance) {
        Ok(comparison) => println!(
            "{name}: {comparison} (bound atol {:.3e}, rtol {:.1e})",
            tolerance.atol, tolerance.rtol
        ),
        Err(error) => panic!("parity failure: {error}"),
    }
}

/// [`assert_close`] with the error model's bound for a chain of
/// `evaluations` model evaluations (1 for one forward pass) in the actual
/// tensor's dtype, at the reference's scale: 0 in exact mode.
#[track_caller]
pub fn assert_matches(name: &str, actual: &Tensor, expected: &Tensor, evaluations: usize) {
    let tolerance = chain_tolerance_for(actual.kind(), evaluations, expected);
    assert_close(name, actual, expected, tolerance)
}

/// [`assert_matches`] for a computation ordered otherwise than the
/// reference's (a batch split into slices, one prompt where the reference
/// encoded three: another GEMM shape rounds otherwise): the error model's
/// bound in every mode, exact mode included.
#[track_caller]
pub fn assert_matches_reordered(
    name: &str,
    actual: &Tensor,
    expected: &Tensor,
    evaluations: usize,
) {
    let per_evaluation = ulps_per_evaluation(actual.kind()) * epsilon(actual.kind());
    let bound = per_evaluation * max_abs(expected) * evaluations.max(1) as f64;
    assert_close(name, actual, expected, Tolerance::abs(bound))
}

/// The largest per-pixel difference between two 8-bit images of the same
/// size (`None` when the sizes differ).
pub fn max_pixel_difference(actual: &[u8], expected: &[u8]) -> Option<u8> {
    (actual.len() == expected.len()).then(|| {
        actual
            .iter()
            .zip(expected)
            .map(|(a, e)| a.abs_diff(*e))
            .max()
            .unwrap_or(0)
    })
}

/// Checks a pipeline's 8-bit image against diffusers' (`reference`, an
/// (H, W, 3) u8 tensor): `decoded` (our decode of diffusers' own latents)
/// within the pixel bound of `kind`, and in exact mode `ours` (our image
/// from our latents) equal to it. Returns the worst pixel difference.
pub fn assert_image_matches(
    key: &str,
    decoded: &[u8],
    ours: &[u8],
    reference: &Tensor,
    kind: Kind,
) -> u8 {
    let pixels = Vec::<u8>::try_from(reference.flatten(0, -1)).expect("a u8 image tensor");
    let worst = max_pixel_difference(decoded, &pixels).expect("same image sizes");
    assert!(
        worst <= pixel_tolerance(kind),
        "{key}: decoding diffusers' latents moves a pixel by {worst} levels"
    );
    if exact_mode() {
        assert_eq!(
            max_pixel_difference(ours, &pixels),
            Some(0),
            "{key}: pixels differ from diffusers' image"
        );
    }
    worst
}

/// The `reference/` folder of this repository (fixtures, outputs, manifests),
/// for tests inside the workspace, or `SD_REFERENCE_DIR` when set (a copy
/// regenerated on this machine by `scripts/parity.sh --same-machine`).
/// Meaningless in a published crate.
pub fn reference_dir() -> std::path::PathBuf {
    match std::env::var_os("SD_REFERENCE_DIR") {
        Some(dir) => dir.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reference"),
    }
}

/// Reads every tensor of a safetensors file (reference outputs) onto the CPU.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(CoreError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ));
    }
    Ok(Tensor::read_safetensors(path)?.into_iter().collect())
}

/// Takes one named tensor out of [`read_tensors`]' map, with a clear error.
pub fn take(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    tensors
        .get(name)
        .map(Tensor::shallow_clone)
        .ok_or_else(|| CoreError::invalid("reference tensors", format!("no tensor named '{name}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_max_abs_and_relative_error() {
        let expected = Tensor::from_slice(&[1.0f32, -2.0, 4.0]);
        let actual = Tensor::from_slice(&[1.0f32, -2.5, 4.0]);
        let c = compare(&actual, &expected, Tolerance::abs(0.1)).unwrap();
        assert_eq!(c.max_abs, 0.5);
        assert_eq!(c.max_rel, 0.125);
        assert_eq!(c.worst_index, 1);
        assert_eq!(c.failing, 1);
    }

    #[test]
    fn check_close_fails_beyond_tolerance_and_passes_within() {
        let expected = Tensor::from_slice(&[1.0f32, 2.0]);
        let near = Tensor::from_slice(&[1.00001f32, 2.0]);
        assert!(check_close("near", &near, &expected, Tolerance::abs(1e-4)).is_ok());
        let far = Tensor::from_slice(&[1.001f32, 2.0]);
        let err = check_close("far", &far, &expected, Tolerance::abs(1e-4)).unwrap_err();
        assert!(err.to_string().contains("far"), "{err}");
        // rtol scales with the reference's magnitude.
        let big = Tensor::from_slice(&[1000.0f32]);
        let off = Tensor::from_slice(&[1000.05f32]);
        assert!(check_close(
            "rel",
            &off,
            &big,
            Tolerance {
                atol: 0.0,
                rtol: 1e-4
            }
        )
        .is_ok());
    }

    #[test]
    fn identical_infinities_agree_but_new_ones_fail() {
        let expected = Tensor::from_slice(&[f32::NEG_INFINITY, f32::NAN, 1.0]);
        assert!(check_close("same", &expected.copy(), &expected, Tolerance::abs(0.0)).is_ok());
        let flipped = Tensor::from_slice(&[f32::INFINITY, f32::NAN, 1.0]);
        assert!(check_close("flipped", &flipped, &expected, Tolerance::abs(1.0)).is_err());
    }

    #[test]
    fn nan_and_shape_mismatch_fail() {
        let expected = Tensor::from_slice(&[1.0f32, 2.0]);
        let nan = Tensor::from_slice(&[f32::NAN, 2.0]);
        assert!(check_close("nan", &nan, &expected, Tolerance::abs(1.0)).is_err());
        let short = Tensor::from_slice(&[1.0f32]);
        assert!(check_close("shape", &short, &expected, Tolerance::abs(1.0)).is_err());
    }
}
