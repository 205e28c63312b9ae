//! Each sampler's `step`, on SD1.5-sized latents (1x4x64x64) on the CPU:
//! one whole 20-step run per iteration (with a zero stand-in model), so
//! per-step time is the reported time / 20.
//! `cargo bench -p sd-benches --bench scheduler_step`

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::rng::CpuGenerator;
use sd_scheduler::{build, SamplerKind, SchedulerConfig};
use tch::{Device, Kind, Tensor};

fn steps(c: &mut Criterion) {
    let config = SchedulerConfig::stable_diffusion();
    let latents = Tensor::randn([1, 4, 64, 64], (Kind::Float, Device::Cpu));
    let model_output = Tensor::zeros([1, 4, 64, 64], (Kind::Float, Device::Cpu));
    let _guard = tch::no_grad_guard();
    let mut group = c.benchmark_group("scheduler_20_steps_1x4x64x64_cpu");
    group.sample_size(20);
    for kind in SamplerKind::ALL {
        let mut scheduler = build(kind, &config).expect("the SD config builds every sampler");
        let mut noise = CpuGenerator::new(0).expect("generator");
        group.bench_function(kind.name(), |b| {
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
                x
            })
        });
    }
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
