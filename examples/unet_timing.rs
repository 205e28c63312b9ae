//! Times UNet forwards of a diffusers folder's UNet on the CPU (profiling aid).
use sd_core::DiffusersModel;
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).unwrap();
    let unet = sd_unet::UNet2DConditionModel::from_folder(
        format!("{dir}/unet"),
        tch::Device::Cpu,
        tch::Kind::Float,
        None,
    )?;
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let x = tch::Tensor::randn([2, 4, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let c = tch::Tensor::randn([2, 77, 768], (tch::Kind::Float, tch::Device::Cpu));
    let t = tch::Tensor::from(500.0);
    for _ in 0..4 {
        let s = Instant::now();
        let _ = unet.forward(&x, &t, &c, None)?;
        println!(
            "rust unet forward {:.3}s threads {}",
            s.elapsed().as_secs_f64(),
            tch::get_num_threads()
        );
    }
    Ok(())
}
