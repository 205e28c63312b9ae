//! The Rust side of csrc/transfer.cpp: host-to-GPU copies without a host wait.

use tch::{Device, Tensor};

use crate::error::Result;

extern "C" {
    fn sd_upload_async(
        tensor: *mut torch_sys::C_tensor,
        device: i32,
        error: *mut *mut std::ffi::c_char,
    ) -> *mut torch_sys::C_tensor;
}

/// `tensor` on `device`. A CPU tensor bound for a GPU goes through pinned
/// memory and a queued copy, so the host does not wait for the GPU's work
/// (a plain `to_device` from pageable memory does): a denoising loop that
/// draws its noise on the CPU keeps running ahead of the GPU.
pub fn upload(tensor: &Tensor, device: Device) -> Result<Tensor> {
    match (tensor.device(), device) {
        (Device::Cpu, Device::Cuda(index)) => {
            let mut error = std::ptr::null_mut();
            // SAFETY: a live tensor handle in; an owned new handle or null
            // with a strdup'd message out.
            let out =
                unsafe { sd_upload_async(tensor.as_ptr() as *mut _, index as i32, &mut error) };
            if out.is_null() {
                return Err(crate::ffi::shim_error("upload", error));
            }
            // SAFETY: a freshly allocated tensor handle, owned by no one else.
            Ok(unsafe { Tensor::from_ptr(out) })
        }
        _ => Ok(tensor.to_device(device)),
    }
}
