//! Times VAE decodes of a diffusers folder's VAE on the CPU (profiling aid).
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    sd_core::alloc::keep_freed_memory();
    let dir = std::env::args().nth(1).unwrap_or_default();
    let vae = sd_vae::AutoencoderKL::from_folder(
        format!("{dir}/vae"),
        tch::Device::Cpu,
        tch::Kind::Float,
        None,
    )?;
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let z = tch::Tensor::randn([1, 4, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    for _ in 0..4 {
        let s = Instant::now();
        let image = vae.decode(&z)?;
        let decode = s.elapsed().as_secs_f64();
        let _ = sd_pipeline::images::tensor_to_images(&image)?;
        println!(
            "rust vae decode {decode:.3}s, + RGB {:.3}s",
            s.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
