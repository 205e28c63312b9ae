//! The UNet against diffusers on tiny random configs (reference/harness_outputs.py,
//! write_unets): SD1-like, SD2-like (linear projection, per-block heads,
//! upcast_attention), SDXL-like (text_time, two transformer layers in a
//! block) and inpainting (9 channels). f32 CPU, max-abs error <= 1e-4.

use std::collections::HashMap;

use sd_core::DiffusersModel;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use sd_unet::{AddedConditions, UNet2DConditionModel};
use tch::{Device, Kind, Tensor};

/// The UNet in `folder` and the reference's inputs under `prefix`
/// (`sample`, `encoder_hidden_states`, and SDXL's `text_embeds`, `time_ids`).
fn unet_and_inputs(
    reference: &HashMap<String, Tensor>,
    prefix: &str,
    folder: &str,
) -> (
    UNet2DConditionModel,
    Tensor,
    Tensor,
    Option<AddedConditions>,
) {
    let t = |key: &str| take(reference, &format!("{prefix}.{key}"));
    let unet = UNet2DConditionModel::from_folder(
        reference_dir().join("fixtures").join(folder).join("unet"),
        Device::Cpu,
        Kind::Float,
        None,
    )
    .unwrap();
    let added = t("text_embeds").ok().map(|text_embeds| AddedConditions {
        text_embeds,
        time_ids: t("time_ids").unwrap(),
    });
    let (sample, context) = (t("sample").unwrap(), t("encoder_hidden_states").unwrap());
    (unet, sample, context, added)
}

#[test]
fn unets_match_diffusers() {
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/unet.safetensors")).unwrap();
    let _guard = tch::no_grad_guard();
    for (name, folder) in [
        ("sd1", "tiny-sd1"),
        ("sd2", "tiny-sd2"),
        ("sdxl", "tiny-sdxl"),
        ("inpaint", "tiny-sd1-inpaint"),
    ] {
        let t = |key: &str| take(&reference, &format!("{name}.{key}"));
        let (unet, sample, context, added) = unet_and_inputs(&reference, name, folder);
        let out = unet
            .forward(&sample, &t("timestep").unwrap(), &context, added.as_ref())
            .unwrap();
        assert_matches(
            &format!("{name} per-sample timesteps"),
            &out,
            &t("out").unwrap(),
            1,
        );
        let out = unet
            .forward(&sample, &Tensor::from(500i64), &context, added.as_ref())
            .unwrap();
        assert_matches(
            &format!("{name} timestep 500"),
            &out,
            &t("out_t500").unwrap(),
            1,
        );
    }
}

/// Odd latent sizes (9x7): the up path upsamples to each skip's size, as
/// diffusers does when a size is not a multiple of the downsampling
/// (reference/harness_sizes.py). f32 CPU, within 1 ulp per evaluation.
#[test]
fn unets_match_diffusers_on_odd_sizes() {
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/sizes.safetensors")).unwrap();
    // The reference ran single-threaded: so do we, for its summation order
    // (at odd sizes the GEMMs split differently across threads).
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    for (name, folder) in [
        ("sd1", "tiny-sd1"),
        ("sd2", "tiny-sd2"),
        ("sdxl", "tiny-sdxl"),
    ] {
        let prefix = format!("unet.{name}");
        let (unet, sample, context, added) = unet_and_inputs(&reference, &prefix, folder);
        assert_eq!(sample.size()[2..], [9, 7]);
        let out = unet
            .forward(&sample, &Tensor::from(500i64), &context, added.as_ref())
            .unwrap();
        let expected = take(&reference, &format!("{prefix}.out")).unwrap();
        assert_matches(&format!("{name} 9x7"), &out, &expected, 1);
    }
}
