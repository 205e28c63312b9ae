//! SD3's text conditioning against diffusers' `StableDiffusion3Pipeline.encode_prompt`
//! on a tiny SD3 pipeline (reference/harness_sd3.py, write_sd3_pipeline):
//! prompt and negative prompt, with T5 and without it (zeros), 16 T5 tokens.
//! f32 CPU, single-threaded like the reference; bit for bit on its machine.

use sd_pipeline::sd3::Sd3TextEncoders;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{Device, Kind};

#[test]
fn sd3_conditioning_matches_diffusers_with_and_without_t5() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/sd3_pipeline.safetensors")).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    let prompt = "a red circle on a white background";
    for (name, with_t5) in [("t5", true), ("no_t5", false)] {
        let encoders = Sd3TextEncoders::from_folder(
            &fixtures.join("sd3/pipeline"),
            Device::Cpu,
            Kind::Float,
            with_t5,
        )
        .unwrap();
        for (text, part) in [(prompt, ""), ("blurry", "negative_")] {
            let c = encoders.encode(text, 16).unwrap();
            let suffix = if part.is_empty() {
                "embeds"
            } else {
                "negative"
            };
            assert_matches(
                &format!("{name} {text}"),
                &c.hidden,
                &t(&format!("cond.{name}.{suffix}")),
                1,
            );
            let pooled = c.pooled.unwrap();
            assert_matches(
                &format!("{name} {text} pooled"),
                &pooled,
                &t(&format!("cond.{name}.{part}pooled")),
                1,
            );
        }
    }
}
