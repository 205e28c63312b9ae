//! Sharing loaded models between threads.
//!
//! `tch::Tensor` is `Send` but not `Sync`, so a struct holding weights is not
//! `Sync` either, although libtorch supports any number of threads running
//! forward passes that only *read* the same tensors. [`Frozen`] marks a
//! value whose tensors are never written after construction, which is what
//! makes sharing it sound.

/// A value shared read-only between threads; see the module documentation.
#[derive(Debug)]
pub struct Frozen<T>(T);

// SAFETY: `Frozen` only hands out `&T`. Every type wrapped in this
// workspace (the models) mutates no tensor through `&self`: forward passes
// allocate new tensors and read the weights, and libtorch allows concurrent
// reads of a tensor. Interior caches (the VAE's f32 twin) sit behind
// `OnceLock`, which is itself thread-safe.
unsafe impl<T: Send> Sync for Frozen<T> {}

impl<T> Frozen<T> {
    /// Wraps `value` for read-only sharing.
    pub fn new(value: T) -> Self {
        Frozen(value)
    }

    /// The value, to change it: `&mut self` proves no thread shares it now
    /// (LoRA merges and textual-inversion tokens change weights this way).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }

    /// The value back.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Frozen<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
