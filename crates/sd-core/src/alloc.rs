//! Allocator tuning for long-running generation processes.
//!
//! A denoising loop allocates and frees the same large activation buffers
//! every step. glibc returns big freed blocks to the kernel (munmap) and
//! gets them back as fresh zeroed pages on the next step: millions of page
//! faults per image (measured: 9.5 M faults and 18 s of kernel time in a
//! 40 s CPU run of SD1.5 at 256x256). Keeping freed memory in the process
//! removes most of it (1.3 M faults, 5 s; the end-to-end time drops 15%).
//! Blocks of 32 MiB and more (glibc's largest mmap threshold; mallopt
//! rejects more) are still mapped and returned: keeping those too, as an
//! earlier version tried, fragments the heap between the UNet loop and the
//! VAE decode and put the peak above diffusers' (docs/benchmarks.md).

/// Tells glibc to keep freed memory for reuse instead of returning it to the
/// kernel. A no-op on other platforms. Call it once, early, from a binary
/// (the `sd` CLI does); a library does not change its host's allocator.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; these values are
    // valid (32 MiB is the largest mmap threshold glibc accepts on 64-bit).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Hands the heap's free pages back to the kernel (`malloc_trim`): between
/// the phases of a generation whose buffers differ in size (the UNet loop,
/// then the VAE decode), so that memory kept by [`keep_freed_memory`] for
/// one phase does not add to the next one's peak. Cheap (a few ms), and
/// harmless under the default allocator. A no-op on other platforms.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
