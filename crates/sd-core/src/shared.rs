//! Sharing loaded models between threads.
//!
//! `tch::Tensor` is `Send` but not `Sync`, so a struct holding weights is not
//! `Sync` either, although libtorch supports any number of threads running
//! forward passes that only *read* the same tensors. [`Frozen`] shares a
//! value across threads; only types that promise, by the unsafe marker trait
//! [`ReadOnlyShared`], that nothing reachable through `&self` writes a tensor
//! or other unsynchronised state can be wrapped. `Frozen::new(Cell::new(0))`
//! does not compile.

/// Types whose `&self` methods never write a tensor or other state without
/// synchronisation, so that `&T` may be used by many threads at once even
/// though `T` is not `Sync` (it holds `tch::Tensor`s).
///
/// # Safety
///
/// Implement it only for a type whose every method taking `&self` (and every
/// `&self` method of what it hands out) reads its tensors and allocates new
/// ones, and keeps any cache behind thread-safe cells (`OnceLock`, `Mutex`).
/// Interior mutability without synchronisation (`Cell`, `RefCell`, an
/// in-place tensor op through `&self`) breaks it.
pub unsafe trait ReadOnlyShared: Send {}

/// A value shared read-only between threads; see the module documentation.
///
/// Only [`ReadOnlyShared`] types can be wrapped:
///
/// ```compile_fail
/// let counter = sd_core::shared::Frozen::new(std::cell::Cell::new(0));
/// ```
#[derive(Debug)]
pub struct Frozen<T>(T);

// SAFETY: `Frozen` only hands out `&T` to shared holders (`get_mut` needs
// `&mut self`, so no other thread holds it then), and `T: ReadOnlyShared`
// promises that `&T` does no unsynchronised writes.
unsafe impl<T: ReadOnlyShared> Sync for Frozen<T> {}

impl<T: ReadOnlyShared> Frozen<T> {
    /// Wraps `value` for read-only sharing.
    pub fn new(value: T) -> Self {
        Frozen(value)
    }
}

impl<T> Frozen<T> {
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
