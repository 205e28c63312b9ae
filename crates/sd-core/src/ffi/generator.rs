//! The Rust side of csrc/generator.cpp: [`CpuGenerator`], libtorch's own
//! CPU generator object, one per run (see [`crate::rng`]).

use std::ffi::c_char;

use tch::{Kind, Tensor};

use crate::error::{CoreError, Result};

extern "C" {
    fn sd_cpu_generator_new(seed: u64, error: *mut *mut c_char) -> *mut std::ffi::c_void;
    fn sd_cpu_generator_free(generator: *mut std::ffi::c_void);
    fn sd_cpu_generator_randn(
        generator: *mut std::ffi::c_void,
        dims: *const i64,
        ndims: usize,
        dtype: i32,
        error: *mut *mut c_char,
    ) -> *mut torch_sys::C_tensor;
    fn sd_cpu_generator_rand(
        generator: *mut std::ffi::c_void,
        dims: *const i64,
        ndims: usize,
        error: *mut *mut c_char,
    ) -> *mut torch_sys::C_tensor;
}

/// A seeded CPU generator; see the module documentation.
pub struct CpuGenerator {
    raw: *mut std::ffi::c_void,
    seed: u64,
}

// SAFETY: at::Generator guards its state with its own mutex; the handle is
// only freed in Drop, which needs exclusive ownership.
unsafe impl Send for CpuGenerator {}

impl CpuGenerator {
    /// A generator seeded as `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Result<Self> {
        let mut error = std::ptr::null_mut();
        // SAFETY: the shim returns a new generator or null with a message.
        let raw = unsafe { sd_cpu_generator_new(seed, &mut error) };
        if raw.is_null() {
            return Err(crate::ffi::shim_error("creating a CPU generator", error));
        }
        Ok(CpuGenerator { raw, seed })
    }

    /// The seed it was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Standard normal noise, f32 on the CPU: `torch.randn(shape, generator=g)`.
    pub fn randn(&mut self, shape: &[i64]) -> Result<Tensor> {
        self.randn_as(shape, Kind::Float)
    }

    /// Standard normal noise drawn as `kind` (f32, f64, f16 or bf16) on the
    /// CPU: `torch.randn(shape, generator=g, dtype=kind)`.
    pub fn randn_as(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor> {
        let dtype = scalar_type(kind)?;
        // SAFETY: as in `draw`; the shim takes the dtype code as is.
        self.draw(shape, "randn", |raw, dims, n, error| unsafe {
            sd_cpu_generator_randn(raw, dims, n, dtype, error)
        })
    }

    /// Uniform noise in [0, 1), f32 on the CPU: `torch.rand(shape, generator=g)`.
    pub fn rand(&mut self, shape: &[i64]) -> Result<Tensor> {
        // SAFETY: as in `draw`.
        self.draw(shape, "rand", |raw, dims, n, error| unsafe {
            sd_cpu_generator_rand(raw, dims, n, error)
        })
    }

    fn draw(
        &mut self,
        shape: &[i64],
        what: &str,
        draw: impl FnOnce(
            *mut std::ffi::c_void,
            *const i64,
            usize,
            *mut *mut c_char,
        ) -> *mut torch_sys::C_tensor,
    ) -> Result<Tensor> {
        if let Some(bad) = shape.iter().find(|&&d| d < 0) {
            return Err(CoreError::invalid(
                what,
                format!("negative dimension {bad} in shape {shape:?}"),
            ));
        }
        let mut error = std::ptr::null_mut();
        // `raw` is a live generator; `shape` outlives the call; the shim
        // returns an owned at::Tensor* that tch takes over, or null.
        let tensor = draw(self.raw, shape.as_ptr(), shape.len(), &mut error);
        if tensor.is_null() {
            return Err(crate::ffi::shim_error(what, error));
        }
        // SAFETY: a freshly allocated tensor handle, owned by no one else.
        Ok(unsafe { Tensor::from_ptr(tensor) })
    }
}

impl Drop for CpuGenerator {
    fn drop(&mut self) {
        // SAFETY: created by sd_cpu_generator_new and freed only here.
        unsafe { sd_cpu_generator_free(self.raw) }
    }
}

impl std::fmt::Debug for CpuGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuGenerator")
            .field("seed", &self.seed)
            .finish()
    }
}

/// libtorch's `at::ScalarType` code of a floating-point kind.
fn scalar_type(kind: Kind) -> Result<i32> {
    match kind {
        Kind::Half => Ok(5),
        Kind::Float => Ok(6),
        Kind::Double => Ok(7),
        Kind::BFloat16 => Ok(15),
        other => Err(CoreError::invalid(
            "randn",
            format!("{other:?} is not a floating-point kind to draw noise in"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_are_independent() {
        let _rng = crate::GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let mut a = CpuGenerator::new(5).unwrap();
        let mut b = CpuGenerator::new(5).unwrap();
        let a1 = a.randn(&[2, 8]).unwrap();
        // Drawing from another generator in between does not disturb `a`.
        let _ = CpuGenerator::new(6).unwrap().randn(&[100]).unwrap();
        tch::manual_seed(123);
        let _ = Tensor::randn([64], (tch::Kind::Float, tch::Device::Cpu));
        let a2 = a.randn(&[3]).unwrap();
        assert_eq!(a1, b.randn(&[2, 8]).unwrap());
        assert_eq!(a2, b.randn(&[3]).unwrap());
        assert_ne!(a1, CpuGenerator::new(6).unwrap().randn(&[2, 8]).unwrap());
    }

    #[test]
    fn matches_the_global_generator_with_the_same_seed() {
        let _rng = crate::GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        // tch::manual_seed + randn is torch.manual_seed + torch.randn.
        tch::manual_seed(42);
        let global = Tensor::randn([1, 4, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
        let mine = CpuGenerator::new(42).unwrap().randn(&[1, 4, 8, 8]).unwrap();
        assert_eq!(global, mine);
    }

    #[test]
    fn bad_shape_is_an_error() {
        assert!(CpuGenerator::new(0).unwrap().randn(&[2, -1]).is_err());
    }
}
