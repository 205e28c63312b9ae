//! Links libtorch for this package's tests, and compiles csrc/generator.cpp
//! (a per-run CPU generator object, which tch does not expose) and
//! csrc/transfer.cpp (host-to-GPU copies without a host wait) and csrc/mapped.cpp
//! (tensors over a weight file's mapping that keep it alive) and csrc/aoti.cpp
//! (AOTInductor packages through libtorch's loader) against it.

use std::path::PathBuf;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(sd_cuda_graphs)");
    if sd_build::doc_only() {
        return;
    }
    sd_build::link_libtorch();
    println!("cargo:rerun-if-changed=csrc/generator.cpp");
    println!("cargo:rerun-if-changed=csrc/transfer.cpp");
    println!("cargo:rerun-if-changed=csrc/mapped.cpp");
    println!("cargo:rerun-if-changed=csrc/aoti.cpp");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let include = PathBuf::from(lib).join("../include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("csrc/generator.cpp")
        .file("csrc/transfer.cpp")
        .file("csrc/mapped.cpp")
        .file("csrc/aoti.cpp")
        .compile("sd_core_generator");
    cuda_graphs(&include);
}

/// The CUDA shims (graphs, allocator statistics), when this libtorch has CUDA
/// and its wheel the CUDA headers (torch, nvidia/cu13, triton's
/// crt/host_config.h). Both sit behind the `sd_cuda_graphs` cfg.
fn cuda_graphs(include: &std::path::Path) {
    println!("cargo:rustc-check-cfg=cfg(sd_cuda_graphs)");
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
    println!("cargo:rerun-if-changed=csrc/cuda_memory.cpp");
    let Ok(include) = include.canonicalize() else {
        return;
    };
    let include = include.as_path();
    let torch = include
        .parent()
        .expect("include/ has a parent")
        .to_path_buf();
    let site = torch.parent().expect("torch/ has a parent").to_path_buf();
    let cuda_include = site.join("nvidia/cu13/include");
    let triton_include = site.join("triton/backends/nvidia/include");
    let has_cuda =
        torch.join("lib/libtorch_cuda.so").exists() && torch.join("lib/libc10_cuda.so").exists();
    if !has_cuda
        || !cuda_include.join("cuda_runtime_api.h").exists()
        || std::env::var_os("SD_NO_CUDA_GRAPHS").is_some()
    {
        return;
    }
    let built = cc::Build::new()
        .cpp(true)
        .std("c++17")
        .warnings(false)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include(&cuda_include)
        .include(&triton_include)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("csrc/cuda_graph.cpp")
        .file("csrc/cuda_memory.cpp")
        .try_compile("sd_core_cuda_graph");
    match built {
        Ok(()) => {
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
            // The CUDA runtime of the wheel (the headers' inline helpers call it).
            println!(
                "cargo:rustc-link-search=native={}",
                site.join("nvidia/cu13/lib").display()
            );
            println!("cargo:rustc-link-lib=dylib:+verbatim=libcudart.so.13");
            println!("cargo:rustc-cfg=sd_cuda_graphs");
        }
        Err(error) => {
            println!("cargo:warning=CUDA graphs disabled: the shim does not compile ({error})")
        }
    }
}
