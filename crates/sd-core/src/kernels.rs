//! Whether libtorch can run attention in a dtype on a device, asked once
//! before any model runs.
//!
//! libtorch picks its CPU kernels by the ATen CPU capability (the CPU's
//! best, or what `ATEN_CPU_CAPABILITY` forces). On a CPU with AMX/AVX-512
//! bf16 (Intel Sapphire Rapids), its flash-attention kernel packs bf16
//! operands with code built only for the AVX-512 capability, so under
//! `ATEN_CPU_CAPABILITY=avx2` or `default` every bf16 attention over
//! 64-wide heads fails ("pack_vnni2 is only supported when avx512 is
//! supported"); plain PyTorch fails alike, so diffusers cannot run there
//! either. Rather than a panic in the middle of a run, a pipeline asks
//! [`check_attention`] when it is built and reports one readable line
//! ([`CoreError::KernelUnavailable`]). Whether the kernel packs depends on
//! the shapes; the probe uses shapes that always do, so the answer is per
//! dtype and device, the same for every image size.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tch::{Device, Kind, Tensor};

use crate::device::dtype_name;
use crate::error::{CoreError, Result};

/// The environment variable that forces libtorch's CPU kernel path.
pub const CPU_CAPABILITY_VAR: &str = "ATEN_CPU_CAPABILITY";

/// Errs with [`CoreError::KernelUnavailable`] when libtorch refuses
/// scaled-dot-product attention in `kind` on `device` in this process.
/// f32 and CUDA devices are not probed (no refusal is known there); the
/// answer for the rest is cached, so the probe (a few milliseconds) runs
/// once per dtype.
pub fn check_attention(kind: Kind, device: Device) -> Result<()> {
    if kind == Kind::Float || device != Device::Cpu {
        return Ok(());
    }
    let refusal = answers()
        .entry(dtype_name(kind))
        .or_insert_with(|| probe(kind, device).err().map(|e| e.to_string()))
        .clone();
    match refusal {
        None => Ok(()),
        Some(message) => Err(refusal_error(
            kind,
            std::env::var(CPU_CAPABILITY_VAR).ok(),
            &message,
        )),
    }
}

/// For tests of what a refusal does, on CPUs where libtorch refuses
/// nothing: from now on this process answers for `kind` as libtorch does
/// when it refuses, with `libtorch_message` as its error.
#[doc(hidden)]
pub fn simulate_refusal(kind: Kind, libtorch_message: &str) {
    answers().insert(dtype_name(kind), Some(libtorch_message.to_string()));
}

/// The probe's answers by dtype name: None where libtorch ran it.
fn answers() -> MutexGuard<'static, HashMap<&'static str, Option<String>>> {
    static ANSWERS: OnceLock<Mutex<HashMap<&'static str, Option<String>>>> = OnceLock::new();
    let answers = ANSWERS.get_or_init(Default::default);
    answers.lock().unwrap_or_else(|e| e.into_inner())
}

/// One attention whose shapes make libtorch's CPU flash kernel take its
/// packing path for reduced dtypes at any thread count: at least 4 heads,
/// heads a multiple of 64 wide, at least 64 keys, and per-thread GEMMs far
/// larger than the packed operand. With one batch of 4 heads and 1024
/// queries (blocks of 256) a thread's GEMM is at least 256 / 4 = 64 times
/// the packed size, above the kernel's threshold (36 for this size) however
/// many threads share the 16 blocks.
fn probe(kind: Kind, device: Device) -> std::result::Result<(), tch::TchError> {
    let _guard = tch::no_grad_guard();
    let q = Tensor::f_ones([1, 4, 1024, 64], (kind, device))?;
    Tensor::f_scaled_dot_product_attention(&q, &q, &q, None::<Tensor>, 0.0, false, None, false)
        .map(drop)
}

/// The error for a refusal: libtorch's first line (its backtrace follows),
/// the dtype, and what the user can change.
fn refusal_error(kind: Kind, capability: Option<String>, message: &str) -> CoreError {
    let reason = message
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("no message")
        .to_string();
    CoreError::KernelUnavailable {
        dtype: dtype_name(kind),
        capability,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_cpu_runs_attention_in_every_dtype_at_its_own_capability() {
        if std::env::var_os(CPU_CAPABILITY_VAR).is_some() {
            return; // the sweep forces other paths: the pipelines' tests cover them
        }
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
            check_attention(kind, Device::Cpu).unwrap();
            check_attention(kind, Device::Cpu).unwrap(); // the cached answer
        }
    }

    /// The refusal libtorch 2.11 gives on Sapphire Rapids under
    /// ATEN_CPU_CAPABILITY=avx2, simulated: one line, naming the dtype, the
    /// variable and its value, and the way out.
    #[test]
    fn a_refusal_is_one_line_naming_the_dtype_and_the_variable() {
        let libtorch = "pack_vnni2 is only supported when avx512 is supported\n\
            Exception raised from pack_vnni2 at /pytorch/aten/src/ATen/cpu/vec/vec_half.h:113 \
            (most recent call first):\nframe #0: c10::Error::Error(...)\n";
        let error = refusal_error(Kind::BFloat16, Some("avx2".into()), libtorch);
        let text = error.to_string();
        assert_eq!(
            text,
            "libtorch cannot run bf16 attention on this CPU with ATEN_CPU_CAPABILITY=avx2 \
             (pack_vnni2 is only supported when avx512 is supported): unset \
             ATEN_CPU_CAPABILITY, or choose another dtype (f32 always runs)"
        );
        let unforced = refusal_error(Kind::Half, None, "no kernel\n").to_string();
        assert_eq!(
            unforced,
            "libtorch cannot run f16 attention on this CPU (no kernel): \
             choose another dtype (f32 always runs)"
        );
        assert!(!text.contains('\n') && !unforced.contains('\n'));
    }
}
