//! Which package is whose: a package's key is the weights' fingerprint, the
//! call's shape, then dtype, device, torch version and CPU instruction set
//! (`{weights}-{n}x{h}x{w}-{dtype}-{device}-{torch}-{cpu}`), in its file name
//! and its metadata; a package whose key differs is refused.

use sd_core::ffi::aoti;
use tch::nn::VarStore;
use tch::{Device, Kind};

/// What a package for one part's weights is keyed by: their fingerprint,
/// and the dtype and device they run in (with torch and the CPU, the
/// machine tail).
pub(super) struct KeyParts {
    pub weights: String,
    pub dtype: Kind,
    pub device: Device,
}

impl KeyParts {
    /// The key for a call of `shape` (its batch, height and width).
    pub fn key(&self, [n, h, w]: [i64; 3]) -> String {
        format!("{}-{n}x{h}x{w}{}", self.weights, self.machine())
    }

    pub fn machine(&self) -> String {
        machine_tail(self.dtype, self.device)
    }
}

pub(super) fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        _ => "f32",
    }
}

pub(super) fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// The key's end: dtype, device, torch version and CPU capability (cheap,
/// unlike the weights' fingerprint).
pub(super) fn machine_tail(dtype: Kind, device: Device) -> String {
    format!(
        "-{}-{}-{}-{}",
        dtype_name(dtype),
        device_name(device).replace(':', ""),
        aoti::torch_version(),
        aoti::cpu_capability().to_lowercase()
    )
}

/// The weights in one short text: each variable's name, shape and two sums
/// (merging a LoRA moves them), hashed. One pass over the weights (the sums
/// accumulate in f64 without an f64 copy of the weights).
pub(super) fn fingerprint(weights: &VarStore) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let _guard = tch::no_grad_guard();
    let mut variables = weights.variables().into_iter().collect::<Vec<_>>();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in variables {
        name.hash(&mut hasher);
        t.size().hash(&mut hasher);
        for sum in [t.sum(Kind::Double), t.abs().sum(Kind::Double)] {
            f64::try_from(sum)
                .unwrap_or(f64::NAN)
                .to_bits()
                .hash(&mut hasher);
        }
    }
    format!("{:016x}", hasher.finish())
}

/// Whether the weights can be compiled as they are: each in `dtype` (a
/// package is compiled for one; GGUF and 8-bit weights are kept narrow).
pub(super) fn check_weights(weights: &VarStore, dtype: Kind) -> std::result::Result<(), String> {
    for (name, t) in weights.variables() {
        if t.kind() != dtype {
            return Err(format!(
                "{name} is {:?}; a compiled package needs every weight in {dtype:?} \
                 (GGUF and 8-bit weights are not compiled)",
                t.kind()
            ));
        }
    }
    Ok(())
}
