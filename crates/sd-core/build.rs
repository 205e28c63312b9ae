//! Links libtorch for this package's tests, and compiles csrc/generator.cpp
//! (a per-run CPU generator object, which tch does not expose) against it.

use std::path::PathBuf;

fn main() {
    sd_build::link_libtorch();
    println!("cargo:rerun-if-changed=csrc/generator.cpp");
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
        .compile("sd_core_generator");
}
