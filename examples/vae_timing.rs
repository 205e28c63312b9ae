//! Times VAE decodes of a diffusers folder's VAE on the CPU (profiling aid).
//! `vae_timing DIR [f32|f16|bf16] [--channels-last]`
use sd_core::DiffusersModel;
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    sd_core::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).cloned().unwrap_or_default();
    let kind = sd_core::device::parse_dtype(args.get(2).map_or("f32", String::as_str))?;
    let vae =
        sd_vae::AutoencoderKL::from_folder(format!("{dir}/vae"), tch::Device::Cpu, kind, None)?;
    if args.iter().any(|a| a == "--channels-last") {
        sd_core::nn::convs_to_channels_last(vae.var_store());
    }
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
