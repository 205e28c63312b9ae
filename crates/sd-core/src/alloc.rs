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

/// Asks the kernel to take back the pages of `vs`'s CPU weights
/// (`madvise(MADV_PAGEOUT)`). Weights used in place from a file are clean
/// file pages: the kernel drops them from the process and faults them back
/// from the page cache (or the file) on their next use. Memory of the
/// process's own is never lost: it is swapped out where there is swap,
/// left as it is where there is none. Between the phases of a low-memory
/// generation, so the text encoders' pages do not add to the denoiser's at
/// the peak, nor the denoiser's to the decode's. A no-op on other platforms
/// and where the kernel does not know the advice.
pub fn page_out(vs: &tch::nn::VarStore) {
    #[cfg(target_os = "linux")]
    for (_, tensor) in vs.variables() {
        if tensor.device() != tch::Device::Cpu || !tensor.is_contiguous() {
            continue;
        }
        let page = 4096usize;
        let start = tensor.data_ptr() as usize;
        let end = start + tensor.numel() * tensor.kind().elt_size_in_bytes();
        // whole pages inside the tensor only: its neighbours are untouched
        let (first, last) = (start.div_ceil(page) * page, end / page * page);
        if last > first {
            // SAFETY: the range lies inside the tensor's own memory, which
            // stays mapped; MADV_PAGEOUT only reclaims pages, never changes
            // what reading them gives.
            unsafe {
                libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_PAGEOUT);
            }
        }
    }
}
