//! CUDA graphs: capture a sequence of libtorch ops once, replay it with one
//! launch. A small C++ shim (csrc/cuda_graph.cpp) holds libtorch's
//! `at::cuda::CUDAGraph` and a side stream; it is built when libtorch has
//! CUDA and its wheel ships the CUDA headers, and [`available`] says so.
//!
//! Capture fails on any host synchronisation inside the captured code
//! (reading a tensor value, a shape taken from a tensor); the caller then
//! falls back to running eagerly. Tensors used inside must stay alive and
//! keep their addresses: copy new inputs into the captured input tensors,
//! replay, read the captured outputs.

use crate::error::Result;

/// Whether this build can capture CUDA graphs at all.
pub fn available() -> bool {
    cfg!(sd_cuda_graphs) && tch::Cuda::is_available()
}

#[cfg(sd_cuda_graphs)]
mod shim {
    use std::ffi::{c_char, c_int, c_void};

    extern "C" {
        pub fn sd_cuda_graph_new(device: c_int, error: *mut *mut c_char) -> *mut c_void;
        pub fn sd_cuda_graph_free(graph: *mut c_void);
        pub fn sd_cuda_graph_begin(graph: *mut c_void, error: *mut *mut c_char) -> c_int;
        pub fn sd_cuda_graph_end(graph: *mut c_void, error: *mut *mut c_char) -> c_int;
        pub fn sd_cuda_graph_replay(graph: *mut c_void, error: *mut *mut c_char) -> c_int;
    }
}

/// A captured graph; replay it after refreshing its input tensors.
pub struct CudaGraph {
    #[cfg(sd_cuda_graphs)]
    raw: *mut std::ffi::c_void,
}

// SAFETY: the graph is only used through &mut self or by value; libtorch's
// CUDAGraph may be replayed from any host thread.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// Captures what `body` launches on CUDA `device`. Returns the graph and
    /// `body`'s result (tensors that the replays will overwrite in place).
    pub fn capture<T>(device: usize, body: impl FnOnce() -> Result<T>) -> Result<(CudaGraph, T)> {
        #[cfg(sd_cuda_graphs)]
        {
            let mut error = std::ptr::null_mut();
            // SAFETY: the shim returns a new graph or null with a message.
            let raw = unsafe { shim::sd_cuda_graph_new(device as i32, &mut error) };
            if raw.is_null() {
                return Err(crate::ffi::shim_error("cuda graph", error));
            }
            let graph = CudaGraph { raw };
            // SAFETY: raw is live; begin/end are paired below on every path.
            if unsafe { shim::sd_cuda_graph_begin(graph.raw, &mut error) } != 0 {
                return Err(crate::ffi::shim_error("cuda graph capture", error));
            }
            let result = body();
            let ended = unsafe { shim::sd_cuda_graph_end(graph.raw, &mut error) };
            let value = result?;
            if ended != 0 {
                return Err(crate::ffi::shim_error("cuda graph capture", error));
            }
            Ok((graph, value))
        }
        #[cfg(not(sd_cuda_graphs))]
        {
            let _ = (device, body);
            Err(crate::error::CoreError::invalid(
                "cuda graph",
                "this build has no CUDA graph support",
            ))
        }
    }

    /// Runs the captured work again, on the current inputs.
    pub fn replay(&mut self) -> Result<()> {
        #[cfg(sd_cuda_graphs)]
        {
            let mut error = std::ptr::null_mut();
            // SAFETY: raw is a live, captured graph.
            if unsafe { shim::sd_cuda_graph_replay(self.raw, &mut error) } != 0 {
                return Err(crate::ffi::shim_error("cuda graph replay", error));
            }
            Ok(())
        }
        #[cfg(not(sd_cuda_graphs))]
        Err(crate::error::CoreError::invalid(
            "cuda graph",
            "this build has no CUDA graph support",
        ))
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        #[cfg(sd_cuda_graphs)]
        // SAFETY: created by sd_cuda_graph_new and freed only here.
        unsafe {
            shim::sd_cuda_graph_free(self.raw)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn capture_and_replay_repeat_the_work_or_report_why_not() {
        if !super::available() {
            let err = super::CudaGraph::capture(0, || Ok(())).err();
            assert!(
                err.is_some(),
                "without CUDA, capture must fail with an error"
            );
            return;
        }
        let device = tch::Device::Cuda(0);
        let input = tch::Tensor::ones([4], (tch::Kind::Float, device));
        // Warm up outside the capture (libtorch allocates lazily).
        let _ = &input * 2.0;
        let (mut graph, output) = super::CudaGraph::capture(0, || Ok(&input * 2.0)).unwrap();
        let _ = input.shallow_clone().fill_(3.0);
        graph.replay().unwrap();
        assert_eq!(
            Vec::<f32>::try_from(output.to_device(tch::Device::Cpu)).unwrap(),
            vec![6.0; 4]
        );
    }
}
