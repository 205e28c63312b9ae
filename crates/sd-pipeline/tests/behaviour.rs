//! Pipeline behaviour beyond parity: threads, cancellation, seeds, bad input.

use std::ops::ControlFlow;
use std::sync::Arc;

use sd_pipeline::front::Field;
use sd_pipeline::{PipelineError, Request, Seed, StableDiffusion};
use sd_testkit::parity::{assert_close, reference_dir, Tolerance};

fn tiny(folder: &str) -> StableDiffusion {
    StableDiffusion::builder()
        .model_dir(reference_dir().join("fixtures").join(folder))
        .build()
        .unwrap()
}

fn quick(prompt: &str, seed: u64) -> Request {
    let mut r = Request::new(prompt);
    r.steps = 3;
    r.seed = seed.into();
    r
}

#[test]
fn pipeline_is_send_and_sync_and_threads_do_not_interfere() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<StableDiffusion>();
    let pipeline = Arc::new(tiny("tiny-sd1"));
    let alone: Vec<_> = [1u64, 2]
        .iter()
        .map(|&s| pipeline.generate(&quick("a cat", s)).unwrap().latents)
        .collect();
    let handles: Vec<_> = [1u64, 2]
        .iter()
        .map(|&seed| {
            let p = Arc::clone(&pipeline);
            std::thread::spawn(move || p.generate(&quick("a cat", seed)).unwrap().latents)
        })
        .collect();
    for (handle, expected) in handles.into_iter().zip(alone) {
        assert_close(
            "threaded run",
            &handle.join().unwrap(),
            &expected,
            Tolerance::abs(1e-5),
        );
    }
}

#[test]
fn callback_sees_every_step_and_can_cancel() {
    let pipeline = tiny("tiny-sd1");
    let mut seen = Vec::new();
    let scheduler = pipeline.new_scheduler().unwrap();
    pipeline
        .generate_with(&quick("a dog", 0), scheduler, &mut |info| {
            seen.push((info.step, info.total, info.timestep));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen.len(), 4, "PNDM makes steps + 1 evaluations: {seen:?}");
    assert_eq!(seen[0].1, 4);
    let scheduler = pipeline.new_scheduler().unwrap();
    let err = pipeline
        .generate_with(&quick("a dog", 0), scheduler, &mut |info| {
            if info.step == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, PipelineError::Cancelled { step: 1 }), "{err}");
}

#[test]
fn per_image_seeds_match_single_runs_and_guidance_one_skips_cfg() {
    let pipeline = tiny("tiny-sd1");
    let mut batch = quick("a red square", 0);
    batch.num_images = 2;
    batch.seed = Seed::PerImage(vec![5, 9]);
    let both = pipeline.generate(&batch).unwrap();
    assert_eq!(both.images.len(), 2);
    for (i, seed) in [5u64, 9].iter().enumerate() {
        let single = pipeline
            .generate(&quick("a red square", *seed))
            .unwrap()
            .latents;
        assert_close(
            "per-image seed",
            &both.latents.get(i as i64).unsqueeze(0),
            &single,
            Tolerance::abs(1e-4),
        );
    }
    // guidance 1: no unconditional pass, so the negative prompt has no effect.
    let mut a = quick("a red square", 3);
    a.guidance_scale = 1.0;
    let mut b = a.clone();
    b.negative_prompt = Some("something else entirely".into());
    assert_eq!(
        pipeline.generate(&a).unwrap().latents,
        pipeline.generate(&b).unwrap().latents
    );
}

/// What a server's batch of different requests does: one prompt per image
/// (embeddings of batch `num_images`), each image its own seed, equal to
/// the requests run alone within the error of a batch-2 matrix product.
#[test]
fn combined_requests_match_their_single_runs() {
    let pipeline = tiny("tiny-sd1");
    let requests = [quick("a red square", 5), quick("a blue circle", 9)];
    let batch = pipeline
        .combine_requests(&requests)
        .unwrap()
        .expect("they agree");
    assert_eq!(batch.num_images, 2);
    assert_eq!(batch.seed, Seed::PerImage(vec![5, 9]));
    let both = pipeline.generate(&batch).unwrap().latents;
    for (i, request) in requests.iter().enumerate() {
        let single = pipeline.generate(request).unwrap().latents;
        assert_close(
            &request.prompt,
            &both.get(i as i64).unsqueeze(0),
            &single,
            Tolerance::abs(1e-4),
        );
    }
    // What cannot share a batch: other steps, one generator for two images.
    let mut longer = quick("a red square", 5);
    longer.steps = 4;
    assert!(pipeline
        .combine_requests(&[quick("a", 1), longer])
        .unwrap()
        .is_none());
    let mut two = quick("a", 1);
    two.num_images = 2;
    assert!(pipeline.combine_requests(&[two]).unwrap().is_none());
    assert!(pipeline.combine_requests(&[]).unwrap().is_none());
    // Embeddings of any batch but 1 or num_images are refused, naming the field.
    let mut wrong = batch.clone();
    wrong.num_images = 3;
    wrong.seed = Seed::Batch(0);
    match pipeline.generate(&wrong) {
        Err(PipelineError::InvalidInput { field, .. }) => assert_eq!(field, Field::Embeddings),
        other => panic!("batch 2 for 3 images: {other:?}"),
    }
}

#[test]
fn bad_requests_name_the_field() {
    let pipeline = tiny("tiny-sd1");
    let mut r = quick("x", 0);
    r.width = Some(60);
    assert!(pipeline
        .generate(&r)
        .unwrap_err()
        .to_string()
        .contains("width: 60"));
    let mut r = quick("x", 0);
    r.steps = 0;
    assert!(pipeline
        .generate(&r)
        .unwrap_err()
        .to_string()
        .contains("steps"));
    let r = quick("x", 0).inpaint(
        image::RgbImage::new(64, 64),
        image::GrayImage::new(32, 64),
        1.0,
    );
    assert!(pipeline
        .generate(&r)
        .unwrap_err()
        .to_string()
        .contains("mask is 32x64"));
    let r = quick("x", 0).image_to_image(image::RgbImage::new(64, 64), 1.5);
    assert!(pipeline
        .generate(&r)
        .unwrap_err()
        .to_string()
        .contains("strength"));
    let mut r = quick("x", 0);
    r.num_images = 2;
    r.seed = Seed::PerImage(vec![1]);
    assert!(pipeline
        .generate(&r)
        .unwrap_err()
        .to_string()
        .contains("1 seeds for 2 images"));
    let inpaint = tiny("tiny-sd1-inpaint");
    assert!(inpaint
        .generate(&quick("x", 0))
        .unwrap_err()
        .to_string()
        .contains("inpainting model"));
}

#[test]
fn a_folder_missing_a_component_is_named() {
    let dir = std::env::temp_dir().join(format!("sd-pipeline-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        reference_dir().join("fixtures/tiny-sd1/model_index.json"),
        dir.join("model_index.json"),
    )
    .unwrap();
    for c in ["tokenizer", "text_encoder", "unet", "scheduler"] {
        std::fs::create_dir_all(dir.join(c)).unwrap();
    }
    let err = StableDiffusion::builder()
        .model_dir(&dir)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vae") && err.contains("missing component"),
        "{err}"
    );
    let err = StableDiffusion::builder()
        .model_dir(dir.join("nowhere"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_index.json"), "{err}");
}

#[test]
fn images_are_rgb_at_the_requested_size() {
    let pipeline = tiny("tiny-sd1");
    let mut r = quick("a blue circle", 1);
    r.width = Some(48);
    r.height = Some(32);
    let out = pipeline.generate(&r).unwrap();
    assert_eq!(out.images[0].dimensions(), (48, 32));
    assert_eq!(out.latents.size(), vec![1, 4, 16, 24]);
    assert_eq!(pipeline.default_size(), (32, 32));
}

#[test]
fn low_memory_mode_gives_the_same_images() {
    let dir = reference_dir().join("fixtures/tiny-sd1");
    let normal = StableDiffusion::builder().model_dir(&dir).build().unwrap();
    let low = StableDiffusion::builder()
        .model_dir(&dir)
        .low_memory(true)
        .build()
        .unwrap();
    let r = quick("a green square", 4);
    let (a, b) = (normal.generate(&r).unwrap(), low.generate(&r).unwrap());
    assert_eq!(a.latents, b.latents);
    // The decode is tiled in low-memory mode; at one tile it is the same image.
    assert_eq!(a.images[0], b.images[0]);
}

#[test]
fn ddim_eta_is_stochastic_and_seeded() {
    let pipeline = StableDiffusion::builder()
        .model_dir(reference_dir().join("fixtures/tiny-sd1"))
        .sampler(sd_pipeline::SamplerKind::Ddim)
        .build()
        .unwrap();
    let mut r = quick("a cat", 2);
    let deterministic = pipeline.generate(&r).unwrap().latents;
    r.eta = 1.0;
    let first = pipeline.generate(&r).unwrap().latents;
    assert_ne!(first, deterministic);
    assert_eq!(first, pipeline.generate(&r).unwrap().latents);
    let euler = tiny("tiny-sd1");
    let err = euler.generate(&r).unwrap_err().to_string();
    assert!(err.contains("eta"), "{err}");
}

#[test]
fn sd1_decodes_in_the_pipeline_dtype_and_sdxl_honours_force_upcast() {
    // Both tiny VAEs say force_upcast; diffusers upcasts only in SDXL pipelines.
    let fixtures = reference_dir().join("fixtures");
    let build = |folder: &str| {
        StableDiffusion::builder()
            .model_dir(fixtures.join(folder))
            .dtype(tch::Kind::Half)
            .build()
            .unwrap()
    };
    assert_eq!(build("tiny-sd1").vae().dtype(), tch::Kind::Half);
    assert_eq!(build("tiny-sdxl").vae().dtype(), tch::Kind::Float);
}

#[test]
fn cuda_graphs_on_the_cpu_run_eagerly_with_the_same_numbers() {
    let dir = reference_dir().join("fixtures/tiny-sd1");
    let plain = StableDiffusion::builder().model_dir(&dir).build().unwrap();
    let asked = StableDiffusion::builder()
        .model_dir(&dir)
        .cuda_graphs(true)
        .build()
        .unwrap();
    let r = quick("a red circle", 5);
    let (a, b) = (plain.generate(&r).unwrap(), asked.generate(&r).unwrap());
    assert_eq!(a.latents, b.latents);
    // Graphs are for CUDA devices only; on the CPU that is not a failure.
    assert_eq!(b.unet_execution, sd_pipeline::UNetExecution::Eager);
}

#[test]
fn requests_no_run_could_serve_are_refused_before_any_step() {
    let pipeline = tiny("tiny-sd1");
    let refused = |r: &Request, needle: &str| {
        let err = pipeline.generate(r).unwrap_err();
        assert!(
            matches!(&err, PipelineError::InvalidInput { .. }) && err.to_string().contains(needle),
            "{err}"
        );
    };
    let mut r = quick("x", 0);
    r.guidance_scale = f64::NAN;
    refused(&r, "guidance_scale: NaN is not a number");
    let mut r = quick("x", 0);
    r.num_images = 0;
    refused(&r, "num_images: at least 1 image");
    // Larger than any device: refused by the size check, not by libtorch.
    let mut r = quick("x", 0);
    (r.width, r.height) = (Some(1 << 20), Some(1 << 20));
    refused(&r, "size: 1048576x1048576 needs at least");
}

#[test]
fn ndarray_edges_carry_the_same_numbers() {
    use sd_pipeline::arrays::*;
    let pipeline = tiny("tiny-sd1");
    let mut r = quick("a red square", 4);
    r.num_images = 2;
    let generation = pipeline.generate(&r).unwrap();
    let images = generation.images_array();
    let (w, h) = generation.images[0].dimensions();
    assert_eq!(images.dim(), (2, h as usize, w as usize, 3));
    for (i, image) in generation.images.iter().enumerate() {
        let one = images.index_axis(ndarray::Axis(0), i);
        assert_eq!(&image_from_array(one).unwrap(), image);
        assert_eq!(image_to_array(image), one);
    }
    let latents = generation.latents_array().unwrap();
    let back = latents_from_array(latents.view());
    assert_eq!(back, generation.latents.to_kind(tch::Kind::Float));
    // Decoding the array's latents gives the generation's images.
    assert_eq!(pipeline.decode_latents(&back).unwrap(), generation.images);
    let mask = image::GrayImage::from_fn(8, 4, |x, y| image::Luma([(x * 30 + y) as u8]));
    assert_eq!(mask_from_array(mask_to_array(&mask).view()).unwrap(), mask);
    assert!(
        image_from_array(ndarray::Array3::<u8>::zeros((4, 4, 2)).view())
            .unwrap_err()
            .to_string()
            .contains("(height, width, 3)")
    );
}

/// A sampler that fails by panicking mid-run, as a `tch` wrapper does when
/// libtorch throws.
struct PanicsAtStep(Box<dyn sd_pipeline::Scheduler>);

impl sd_pipeline::Scheduler for PanicsAtStep {
    fn name(&self) -> &'static str {
        "panics"
    }
    fn set_timesteps(&mut self, steps: usize) -> sd_scheduler::Result<()> {
        self.0.set_timesteps(steps)
    }
    fn timesteps(&self) -> &[f64] {
        self.0.timesteps()
    }
    fn step(
        &mut self,
        _: &tch::Tensor,
        _: usize,
        _: &tch::Tensor,
        _: &mut dyn sd_core::rng::NoiseSource,
    ) -> sd_scheduler::Result<tch::Tensor> {
        panic!("simulated libtorch failure")
    }
    fn add_noise(
        &self,
        x: &tch::Tensor,
        n: &tch::Tensor,
        i: usize,
    ) -> sd_scheduler::Result<tch::Tensor> {
        self.0.add_noise(x, n, i)
    }
}

#[test]
fn a_panic_inside_a_run_is_an_error_and_the_pipeline_lives_on() {
    let pipeline = tiny("tiny-sd1");
    let r = quick("x", 0);
    let scheduler = Box::new(PanicsAtStep(pipeline.new_scheduler().unwrap()));
    let err = pipeline
        .generate_with(&r, scheduler, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("panicked: simulated libtorch failure"),
        "{err}"
    );
    let a = pipeline.generate(&r).unwrap().latents;
    let b = pipeline.generate(&r).unwrap().latents;
    assert_eq!(a, b);
}

/// libtorch's refusal of a dtype's attention (bf16 under a forced
/// `ATEN_CPU_CAPABILITY` on CPUs with AMX), simulated so that every CPU runs
/// this path: the build fails in one line naming the dtype, before any
/// weights load; other dtypes still build. (No other test of this binary
/// runs bf16: the simulated answer holds for the whole process.)
#[test]
fn a_dtype_libtorch_refuses_fails_the_build_in_one_line() {
    use sd_core::CoreError;
    use tch::Kind;
    sd_core::kernels::simulate_refusal(
        Kind::BFloat16,
        "pack_vnni2 is only supported when avx512 is supported\n\
         Exception raised from pack_vnni2 at /pytorch/aten/src/ATen/cpu/vec/vec_half.h:113\n\
         frame #0: c10::Error::Error(...)",
    );
    let build = |folder: &str, kind| {
        StableDiffusion::builder()
            .model_dir(reference_dir().join("fixtures").join(folder))
            .dtype(kind)
            .build()
    };
    let Err(error) = build("tiny-sd1", Kind::BFloat16) else {
        panic!("bf16 was built though refused");
    };
    assert!(
        matches!(
            &error,
            PipelineError::Core(CoreError::KernelUnavailable { dtype: "bf16", .. })
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        !text.contains('\n')
            && text.starts_with("libtorch cannot run bf16 attention on this CPU")
            && text.contains("(pack_vnni2 is only supported when avx512 is supported)")
            && text.ends_with("choose another dtype (f32 always runs)"),
        "{text}"
    );
    // Before the weights: a folder that is not there gets the same answer.
    let Err(error) = build("not-a-model", Kind::BFloat16) else {
        panic!("bf16 was built though refused");
    };
    assert!(matches!(
        error,
        PipelineError::Core(CoreError::KernelUnavailable { .. })
    ));
    build("tiny-sd1", Kind::Float).unwrap();
}

/// Conflicting builder options are refused, naming both, rather than one
/// silently winning: two model sources, a config folder for a folder, a
/// variant for a single file.
#[test]
fn conflicting_builder_options_are_refused() {
    let tiny = reference_dir().join("fixtures/tiny-sd1");
    let file = reference_dir().join("fixtures/single-file/tiny-sd1.safetensors");
    let cases = [
        (
            StableDiffusion::builder()
                .model_dir(&tiny)
                .hub_repo("org/model"),
            "model_dir and hub_repo are alternatives",
        ),
        (
            StableDiffusion::builder()
                .model_dir(&tiny)
                .config_dir(&tiny),
            "config_dir is for a single_file model",
        ),
        (
            StableDiffusion::builder()
                .single_file(&file)
                .variant("fp16"),
            "variant picks a folder's weight files",
        ),
    ];
    for (builder, needle) in cases {
        match builder.build() {
            Err(PipelineError::InvalidInput { field, message }) => {
                assert_eq!(field, Field::Model);
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("{needle}: {other:?}"),
        }
    }
}

/// The flow-matching samplers are for SD3-like models: an SD1/SD2/SDXL
/// pipeline refuses them at build and per request, naming the sampler.
#[test]
fn flow_matching_samplers_are_refused_for_noise_prediction_models() {
    let tiny = reference_dir().join("fixtures/tiny-sd1");
    let refused = |result: sd_pipeline::Result<()>| match result {
        Err(PipelineError::InvalidInput { field, message }) => {
            assert_eq!(field, Field::Sampler);
            assert!(
                message.contains("flow-euler is for flow-matching models"),
                "{message}"
            );
        }
        other => panic!("accepted: {other:?}"),
    };
    let built = StableDiffusion::builder()
        .model_dir(&tiny)
        .sampler(sd_pipeline::SamplerKind::FlowEuler)
        .build();
    refused(built.map(drop));
    let pipeline = StableDiffusion::builder().model_dir(&tiny).build().unwrap();
    refused(
        pipeline
            .new_scheduler_of(sd_pipeline::SamplerKind::FlowEuler)
            .map(drop),
    );
}
