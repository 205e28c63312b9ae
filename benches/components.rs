//! Text encoder, UNet step and VAE decode. On the CPU: the tiny reference
//! models (reference/fixtures/tiny-sd1). With CUDA: also the full SD1.5
//! text encoder, UNet (CFG batch 2, 64x64 latents) and VAE (64x64 ->
//! 512x512) in f16, from the real configs with seeded random weights
//! (written once to $SD_RS_RANDOM_SD15, default <tmp>/sd15-random-rs).
//! `cargo bench -p sd-benches --bench components`

use sd_core::DiffusersModel;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use sd_clip::ClipTextModel;
use sd_unet::UNet2DConditionModel;
use sd_vae::AutoencoderKL;
use tch::{Device, Kind, Tensor};

fn reference() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../reference"))
}

fn tiny(c: &mut Criterion) {
    let dir = reference().join("fixtures/tiny-sd1");
    let cpu = Device::Cpu;
    let _guard = tch::no_grad_guard();
    let te = ClipTextModel::from_folder(dir.join("text_encoder"), cpu, Kind::Float, None)
        .expect("fixture");
    let unet = UNet2DConditionModel::from_folder(dir.join("unet"), cpu, Kind::Float, None)
        .expect("fixture");
    let vae = AutoencoderKL::from_folder(dir.join("vae"), cpu, Kind::Float, None).expect("fixture");
    let ids = Tensor::full([2, 77], 320, (Kind::Int64, cpu));
    let latents = Tensor::randn([2, 4, 32, 32], (Kind::Float, cpu));
    let context = Tensor::randn([2, 77, 8], (Kind::Float, cpu));
    let t = Tensor::from(500.0);
    c.bench_function("tiny_text_encode_batch2_cpu", |b| {
        b.iter(|| te.forward(&ids).expect("forward"))
    });
    c.bench_function("tiny_unet_step_cfg_32x32_cpu", |b| {
        b.iter(|| unet.forward(&latents, &t, &context, None).expect("forward"))
    });
    c.bench_function("tiny_vae_decode_32x32_cpu", |b| {
        b.iter(|| vae.decode(&latents.narrow(0, 0, 1)).expect("decode"))
    });
}

fn full_size_gpu(c: &mut Criterion) {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: skipping the full-size SD1.5 benches");
        return;
    }
    // The real SD1.5 configs with seeded random weights, written once (f16).
    let dir = std::env::var_os("SD_RS_RANDOM_SD15")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sd15-random-rs"));
    if !dir.join("model_index.json").exists() {
        sd_train::model::write_random_sd15(&dir, 0, Kind::Half).expect("random SD1.5 folder");
    }
    let gpu = Device::Cuda(0);
    let half = Kind::Half;
    tch::Cuda::cudnn_set_benchmark(true);
    let _guard = tch::no_grad_guard();
    let te = ClipTextModel::from_folder(dir.join("text_encoder"), gpu, half, None).expect("te");
    let unet = UNet2DConditionModel::from_folder(dir.join("unet"), gpu, half, None).expect("unet");
    let vae = AutoencoderKL::from_folder(dir.join("vae"), gpu, half, None).expect("vae");
    let ids = Tensor::full([2, 77], 320, (Kind::Int64, gpu));
    let latents = Tensor::randn([2, 4, 64, 64], (half, gpu));
    let context = Tensor::randn([2, 77, 768], (half, gpu));
    let t = Tensor::from(500.0).to_device(gpu);
    let timed = |f: &dyn Fn() -> Tensor| {
        let out = f();
        tch::Cuda::synchronize(0);
        out
    };
    c.bench_function("sd15_text_encode_batch2_f16_cuda", |b| {
        b.iter(|| timed(&|| te.forward(&ids).expect("forward").last_hidden_state))
    });
    c.bench_function("sd15_unet_step_cfg_64x64_f16_cuda", |b| {
        b.iter(|| timed(&|| unet.forward(&latents, &t, &context, None).expect("forward")))
    });
    c.bench_function("sd15_vae_decode_512_f16_cuda", |b| {
        b.iter(|| timed(&|| vae.decode(&latents.narrow(0, 0, 1)).expect("decode")))
    });
}

criterion_group!(benches, tiny, full_size_gpu);
criterion_main!(benches);
