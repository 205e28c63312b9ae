//! The Rust side of csrc/mapped.cpp: CPU tensors over memory libtorch does
//! not own, each holding a reference to its owner until libtorch frees it.

use std::any::Any;
use std::ffi::c_void;

use tch::{Kind, Tensor};

use crate::error::Result;

extern "C" {
    fn sd_tensor_over(
        data: *mut c_void,
        shape: *const i64,
        strides: *const i64,
        ndim: i64,
        like: *mut torch_sys::C_tensor,
        owner: *mut c_void,
        release: extern "C" fn(*mut c_void),
        error: *mut *mut std::ffi::c_char,
    ) -> *mut torch_sys::C_tensor;
}

type Owner = Box<dyn Any + Send + Sync>;

extern "C" fn release(owner: *mut c_void) {
    // SAFETY: made by Box::into_raw in `tensor_over`, released once by libtorch.
    drop(unsafe { Box::from_raw(owner.cast::<Owner>()) });
}

/// A contiguous CPU tensor of `kind` and `shape` over the bytes at `data`;
/// `owner` is kept alive until the tensor's storage is freed.
///
/// # Safety
/// `data` must point to `numel(shape) * kind.elt_size_in_bytes()` bytes,
/// aligned for `kind`, that stay valid and writable (libtorch may write
/// through any tensor) for as long as `owner` lives, and that nothing else
/// writes while the tensor is used.
pub unsafe fn tensor_over(
    owner: Owner,
    data: *mut u8,
    shape: &[i64],
    kind: Kind,
) -> Result<Tensor> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    // tch keeps its dtype numbering private: an empty tensor carries the dtype
    let like = Tensor::empty([0], (kind, tch::Device::Cpu));
    let owner = Box::into_raw(Box::new(owner)).cast::<c_void>();
    let mut error = std::ptr::null_mut();
    let out = sd_tensor_over(
        data.cast(),
        shape.as_ptr(),
        strides.as_ptr(),
        shape.len() as i64,
        like.as_ptr() as *mut _,
        owner,
        release,
        &mut error,
    );
    if out.is_null() {
        // the owner is leaked: whether libtorch ran the release is unknown
        return Err(crate::ffi::shim_error("tensor over mapped memory", error));
    }
    // SAFETY: a freshly allocated tensor handle, owned by no one else.
    Ok(Tensor::from_ptr(out))
}
