//! Peak GPU memory, as libtorch's caching allocator counts it (the numbers
//! `torch.cuda.max_memory_allocated` and `max_memory_reserved` report), so
//! benchmarks can compare memory with diffusers. Needs the CUDA shim (see
//! [`crate::ffi::cuda_graph::available`]); without it every call says so.

use crate::error::{CoreError, Result};

/// Peak bytes since the last [`reset_peak`] (or the process start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakMemory {
    /// Bytes held by live tensors at the worst moment.
    pub allocated: i64,
    /// Bytes the allocator had reserved from the driver at its worst moment.
    pub reserved: i64,
}

#[cfg(sd_cuda_graphs)]
extern "C" {
    fn sd_cuda_memory_peak(
        device: i32,
        allocated: *mut i64,
        reserved: *mut i64,
        error: *mut *mut std::ffi::c_char,
    ) -> i32;
    fn sd_cuda_memory_reset_peak(device: i32, error: *mut *mut std::ffi::c_char) -> i32;
    fn sd_cuda_memory_free(
        device: i32,
        free_bytes: *mut i64,
        error: *mut *mut std::ffi::c_char,
    ) -> i32;
}

/// Bytes a new allocation on CUDA device `device` could still get: free in
/// the driver plus reserved but unused in the caching allocator.
pub fn free(device: usize) -> Result<u64> {
    if !crate::ffi::cuda_graph::available() {
        return Err(unavailable());
    }
    #[cfg(sd_cuda_graphs)]
    {
        let mut free_bytes = 0i64;
        let mut error = std::ptr::null_mut();
        // SAFETY: a plain out-pointer; the shim writes it or an error message.
        let status = unsafe { sd_cuda_memory_free(device as i32, &mut free_bytes, &mut error) };
        if status != 0 {
            return Err(crate::ffi::shim_error("cuda memory", error));
        }
        Ok(free_bytes.max(0) as u64)
    }
    #[cfg(not(sd_cuda_graphs))]
    {
        let _ = device;
        Err(unavailable())
    }
}

fn unavailable() -> CoreError {
    CoreError::invalid(
        "cuda memory",
        "this build has no CUDA shim or no CUDA device",
    )
}

/// The peaks of CUDA device `device`.
pub fn peak(device: usize) -> Result<PeakMemory> {
    if !crate::ffi::cuda_graph::available() {
        return Err(unavailable());
    }
    #[cfg(sd_cuda_graphs)]
    {
        let (mut allocated, mut reserved) = (0i64, 0i64);
        let mut error = std::ptr::null_mut();
        // SAFETY: plain out-pointers; the shim writes them or an error message.
        let status = unsafe {
            sd_cuda_memory_peak(device as i32, &mut allocated, &mut reserved, &mut error)
        };
        if status != 0 {
            return Err(crate::ffi::shim_error("cuda memory", error));
        }
        Ok(PeakMemory {
            allocated,
            reserved,
        })
    }
    #[cfg(not(sd_cuda_graphs))]
    {
        let _ = device;
        Err(unavailable())
    }
}

/// Starts counting peaks afresh on CUDA device `device`.
pub fn reset_peak(device: usize) -> Result<()> {
    if !crate::ffi::cuda_graph::available() {
        return Err(unavailable());
    }
    #[cfg(sd_cuda_graphs)]
    {
        let mut error = std::ptr::null_mut();
        // SAFETY: the shim writes an error message only on failure.
        if unsafe { sd_cuda_memory_reset_peak(device as i32, &mut error) } != 0 {
            return Err(crate::ffi::shim_error("cuda memory", error));
        }
        Ok(())
    }
    #[cfg(not(sd_cuda_graphs))]
    {
        let _ = device;
        Err(unavailable())
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    #[test]
    fn peaks_count_a_known_allocation_or_report_why_not() {
        if !crate::ffi::cuda_graph::available() {
            assert!(super::peak(0).is_err() && super::reset_peak(0).is_err());
            return;
        }
        super::reset_peak(0).unwrap();
        let before = super::peak(0).unwrap();
        // 64 MiB of f32, then freed: the peak must keep it.
        let big = Tensor::zeros([16 << 20], (Kind::Float, Device::Cuda(0)));
        drop(big);
        let after = super::peak(0).unwrap();
        assert!(
            after.allocated - before.allocated >= 64 << 20,
            "{before:?} -> {after:?}"
        );
        assert!(after.reserved >= after.allocated);
    }
}
