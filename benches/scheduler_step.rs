//! Each sampler's `step`, on SD1.5-sized latents (1x4x64x64), on the CPU
//! and, where present, on CUDA (f16, as a GPU pipeline runs them): one whole
//! 20-step run per iteration (with a zero stand-in model), so per-step time
//! is the reported time / 20.
//! `cargo bench -p sd-benches --bench scheduler_step`

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::rng::CpuGenerator;
use sd_scheduler::{build, SamplerKind, SchedulerConfig};
use tch::{Device, Kind, Tensor};

fn run_group(c: &mut Criterion, name: &str, device: Device, kind: Kind) {
    let config = SchedulerConfig::stable_diffusion();
    let latents = Tensor::randn([1, 4, 64, 64], (kind, device));
    let model_output = Tensor::zeros([1, 4, 64, 64], (kind, device));
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    for sampler in SamplerKind::ALL {
        let mut scheduler = build(sampler, &config).expect("the SD config builds every sampler");
        let mut noise = CpuGenerator::new(0).expect("generator");
        group.bench_function(sampler.name(), |b| {
            b.iter(|| {
                scheduler.set_timesteps(20).expect("20 steps");
                let mut x = latents.shallow_clone();
                for i in 0..scheduler.timesteps().len() {
                    let input = scheduler.scale_model_input(&x, i).expect("in range");
                    let _ = input;
                    x = scheduler
                        .step(&model_output, i, &x, &mut noise)
                        .expect("step");
                }
                if let Device::Cuda(index) = device {
                    tch::Cuda::synchronize(index as i64);
                }
                x
            })
        });
    }
    group.finish();
}

fn steps(c: &mut Criterion) {
    run_group(
        c,
        "scheduler_20_steps_1x4x64x64_cpu",
        Device::Cpu,
        Kind::Float,
    );
    if tch::Cuda::is_available() {
        run_group(
            c,
            "scheduler_20_steps_1x4x64x64_f16_cuda",
            Device::Cuda(0),
            Kind::Half,
        );
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
