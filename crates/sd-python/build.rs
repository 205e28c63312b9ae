fn main() {
    sd_build::link_libtorch();
    // Installed into site-packages/sd_rs/, the module finds the libtorch of
    // the environment's torch wheel next to it (beside the absolute path of
    // the build machine's, which link_libtorch adds).
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../nvidia/cu13/lib");
}
