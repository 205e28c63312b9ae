//! Text encoder, UNet step and VAE decode. On the CPU: the tiny reference
//! models (reference/fixtures/tiny-sd1). With CUDA: also the full SD1.5
//! UNet (CFG batch 2, 64x64 latents) and VAE (64x64 -> 512x512) in f16,
//! built from the real configs with random weights.
//! `cargo bench -p sd-benches --bench components`

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use sd_clip::ClipTextModel;
use sd_unet::{UNet2DConditionModel, UNetConfig};
use sd_vae::{AutoencoderKL, VaeConfig};
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
    let gpu = Device::Cuda(0);
    let _guard = tch::no_grad_guard();
    let config = |component: &str| -> String {
        let text =
            std::fs::read_to_string(reference().join(format!("manifests/sd15/{component}.json")))
                .expect("manifest");
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        value["config"].to_string()
    };
    tch::manual_seed(0);
    let unet = UNet2DConditionModel::new(
        &UNetConfig::from_json_str(&config("unet")).expect("config"),
        gpu,
    )
    .expect("unet");
    sd_core::nn::init_for_training(unet.var_store());
    let vae = AutoencoderKL::new(
        &VaeConfig::from_json_str(&config("vae")).expect("config"),
        gpu,
    )
    .expect("vae");
    sd_core::nn::init_for_training(vae.var_store());
    let latents = Tensor::randn([2, 4, 64, 64], (Kind::Float, gpu));
    let context = Tensor::randn([2, 77, 768], (Kind::Float, gpu));
    let t = Tensor::from(500.0);
    c.bench_function("sd15_unet_step_cfg_64x64_f32_cuda", |b| {
        b.iter(|| {
            let out = unet.forward(&latents, &t, &context, None).expect("forward");
            tch::Cuda::synchronize(0);
            out
        })
    });
    c.bench_function("sd15_vae_decode_512_f32_cuda", |b| {
        b.iter(|| {
            let out = vae.decode(&latents.narrow(0, 0, 1)).expect("decode");
            tch::Cuda::synchronize(0);
            out
        })
    });
}

criterion_group!(benches, tiny, full_size_gpu);
criterion_main!(benches);
