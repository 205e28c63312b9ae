//! `sd`: the command line tool. Image generation arrives with the pipeline
//! issue; `sd doctor` already tells what this build of libtorch can use.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sd", version, about = "Stable Diffusion in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what this build of libtorch can use (CPU threads, CUDA devices, cuDNN).
    Doctor {
        /// Also run a small convolution and attention on this device (cpu, cuda, cuda:N).
        #[arg(long)]
        device: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Doctor { device } => doctor(device.as_deref()),
    }
}

fn doctor(device: Option<&str>) -> Result<()> {
    println!("cpu threads: {}", tch::get_num_threads());
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    if let Some(text) = device {
        let device = sd_core::device::parse_device(text)?;
        let x = tch::Tensor::randn([1, 4, 64, 64], (tch::Kind::Float, device));
        let w = tch::Tensor::randn([8, 4, 3, 3], (tch::Kind::Float, device));
        let conv = x.f_conv2d(&w, None::<tch::Tensor>, [1, 1], [1, 1], [1, 1], 1)?;
        let q = conv
            .f_view([1, 8, 64 * 64])?
            .f_transpose(1, 2)?
            .f_unsqueeze(1)?;
        let attn = tch::Tensor::f_scaled_dot_product_attention(
            &q,
            &q,
            &q,
            None::<tch::Tensor>,
            0.0,
            false,
            None,
            false,
        )?;
        println!(
            "ran conv2d + attention on {text}: output {:?} on {:?}",
            attn.size(),
            attn.device()
        );
    }
    Ok(())
}
