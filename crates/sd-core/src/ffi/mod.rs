//! The Rust sides of the six small C++ shims in `csrc/` (what `tch` does not
//! expose), compiled by build.rs against the wheel's libtorch headers:
//!
//! - [`generator`]: per-run CPU generators (`torch.Generator("cpu")` streams).
//! - [`transfer`]: host-to-GPU copies through pinned memory, without a host wait.
//! - [`mapped`]: CPU tensors over a weight file's mapping, which they keep alive.
//! - [`cuda_graph`]: CUDA graph capture and replay.
//! - [`cuda_memory`]: the CUDA caching allocator's peak statistics.
//! - [`aoti`]: models compiled ahead of time by torch's compiler (`.pt2` packages).
//!
//! The two CUDA shims are built only where the wheel has CUDA and its headers
//! (`cfg(sd_cuda_graphs)`); elsewhere their functions report that.
//! With the `doc-only` feature nothing is compiled or linked.

pub mod aoti;
pub mod cuda_graph;
pub mod cuda_memory;
pub mod generator;
pub mod mapped;
pub mod transfer;

use crate::error::CoreError;

/// The error a shim reported: it hands back a `strdup`'d message (or
/// null), which this takes over and frees.
pub(crate) fn shim_error(context: &str, message: *mut std::ffi::c_char) -> CoreError {
    let text = if message.is_null() {
        "unknown libtorch error".to_string()
    } else {
        // SAFETY: a NUL-terminated copy made by strdup in the shim.
        let text = unsafe { std::ffi::CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: allocated with malloc by strdup, freed only here.
        unsafe { libc::free(message.cast()) };
        text
    };
    CoreError::invalid(context, text)
}
