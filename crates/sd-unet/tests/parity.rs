//! The UNet against diffusers on tiny random configs (reference/harness_outputs.py,
//! write_unets): SD1-like, SD2-like (linear projection, per-block heads,
//! upcast_attention), SDXL-like (text_time, two transformer layers in a
//! block) and inpainting (9 channels). f32 CPU, max-abs error <= 1e-4.

use sd_core::DiffusersModel;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use sd_unet::{AddedConditions, UNet2DConditionModel};
use tch::{Device, Kind, Tensor};

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
        let unet = UNet2DConditionModel::from_folder(
            fixtures.join(folder).join("unet"),
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
    let _guard = tch::no_grad_guard();
    for (name, folder) in [
        ("sd1", "tiny-sd1"),
        ("sd2", "tiny-sd2"),
        ("sdxl", "tiny-sdxl"),
    ] {
        let t = |key: &str| take(&reference, &format!("unet.{name}.{key}"));
        let unet = UNet2DConditionModel::from_folder(
            fixtures.join(folder).join("unet"),
            Device::Cpu,
            Kind::Float,
            None,
        )
        .unwrap();
        let added = t("text_embeds").ok().map(|text_embeds| AddedConditions {
            text_embeds,
            time_ids: t("time_ids").unwrap(),
        });
        let sample = t("sample").unwrap();
        assert_eq!(sample.size()[2..], [9, 7]);
        let out = unet
            .forward(
                &sample,
                &Tensor::from(500i64),
                &t("encoder_hidden_states").unwrap(),
                added.as_ref(),
            )
            .unwrap();
        assert_matches(&format!("{name} 9x7"), &out, &t("out").unwrap(), 1);
    }
}
