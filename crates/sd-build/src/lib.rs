//! Build-script helper for every package that links libtorch.
//!
//! Call [`link_libtorch`] from `build.rs` of a package that depends on
//! `torch-sys` directly (that is what makes cargo hand its build script the
//! `DEP_TCH_LIBTORCH_LIB` variable). It does two things for the package's own
//! binaries, tests, examples and benches:
//!
//! 1. an rpath to libtorch's `lib/` folder, so they run with no
//!    `LD_LIBRARY_PATH` exported by hand;
//! 2. `libtorch.so` (AOTInductor packages need it loaded) and
//!    `libtorch_cuda.so` linked past the linker's `--as-needed`. Nothing in
//!    the Rust code references a symbol of it, so the linker would drop it and
//!    CUDA would then be silently unavailable at run time.
//!
//! Cargo passes `rustc-link-arg` only to the package that prints it, never to
//! its dependents; so each binary-producing package needs this call, and so
//! does an application of yours that depends on `sd-pipeline`.
#![warn(missing_docs)]

use std::path::Path;

/// Whether the package being built has its `doc-only` feature on (docs.rs,
/// or documentation on a machine without libtorch): then nothing is linked
/// or compiled against libtorch.
pub fn doc_only() -> bool {
    std::env::var_os("CARGO_FEATURE_DOC_ONLY").is_some()
}

/// Prints the cargo instructions described in the crate documentation.
pub fn link_libtorch() {
    if doc_only() {
        return;
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys did not report a folder (doc-only builds): nothing to link.
        println!("cargo:warning=sd-build: DEP_TCH_LIBTORCH_LIB is unset; add torch-sys as a direct dependency");
        return;
    };
    // The real folder, not a path through a link in the source tree (the
    // setup's `.libtorch`): an installed binary must not depend on the clone.
    let lib = Path::new(&lib)
        .canonicalize()
        .map_or(lib.clone(), |p| p.display().to_string());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // The wheel's CUDA runtime, next to torch/ (the CUDA-graph shim links it).
    let cudart = Path::new(&lib).join("../../nvidia/cu13/lib");
    if let Ok(dir) = cudart.canonicalize() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    // libtorch.so too, though nothing names its symbols: AOTInductor packages
    // (sd_core::ffi::aoti) are shared objects that need it, and a dlopen'd
    // object's needs are not searched on the executable's rpath (RUNPATH),
    // only matched against what the process has loaded.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
