//! Shared layers on CPU at a small size: ResnetBlock2D and pixel attention.
//! `cargo bench -p sd-benches --bench layers`

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::layers::{Attention, AttentionConfig, ResnetBlock2D, ResnetConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn layers(c: &mut Criterion) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let resnet = ResnetBlock2D::new(vs.root() / "resnet", &ResnetConfig::new(64, 128, Some(256)))
        .expect("valid config");
    let mut attention = AttentionConfig::transformer(128, None, 1, 128);
    attention.bias = true;
    attention.group_norm = Some((32, 1e-6));
    attention.residual_connection = true;
    let attention = Attention::new(vs.root() / "attention", &attention).expect("valid config");
    sd_core::nn::init_for_training(&vs);
    let x = Tensor::randn([1, 64, 32, 32], (Kind::Float, Device::Cpu));
    let temb = Tensor::randn([1, 256], (Kind::Float, Device::Cpu));
    let h = Tensor::randn([1, 128, 32, 32], (Kind::Float, Device::Cpu));
    let _guard = tch::no_grad_guard();
    c.bench_function("resnet_block_64_128_32x32_cpu", |b| {
        b.iter(|| resnet.forward(&x, Some(&temb)))
    });
    c.bench_function("pixel_attention_128ch_32x32_cpu", |b| {
        b.iter(|| attention.forward(&h, None))
    });
}

criterion_group!(benches, layers);
criterion_main!(benches);
