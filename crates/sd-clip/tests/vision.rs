//! The image tower and its preprocessing against transformers
//! (reference/harness_ip_adapter.py): `CLIPImageProcessor`'s pixels for a
//! square 64x64, a 72x64 and a control image, then the tiny
//! `CLIPVisionModelWithProjection`'s image embedding and penultimate hidden
//! states, f32.

use sd_clip::image_processor::preprocess;
use sd_clip::ClipVisionModel;
use sd_core::DiffusersModel;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{Device, Kind};

fn encoder() -> ClipVisionModel {
    let folder = reference_dir().join("fixtures/ip-adapter/image_encoder");
    ClipVisionModel::from_folder(folder, Device::Cpu, Kind::Float, None).unwrap()
}

#[test]
fn pixels_and_embeddings_match_transformers() {
    tch::set_num_threads(1);
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/ip_adapter.safetensors")).unwrap();
    let encoder = encoder();
    let _guard = tch::no_grad_guard();
    for name in ["init", "init-72x64", "control-a-72x64"] {
        let image = image::open(fixtures.join(format!("images/{name}.png")))
            .unwrap()
            .to_rgb8();
        let pixels = preprocess(&image, 224).unwrap();
        let want = take(&reference, &format!("pixels.{name}")).unwrap();
        // 8-bit resize, then one subtraction and one division per value
        assert_matches(&format!("pixels.{name}"), &pixels, &want, 1);
        let out = encoder.forward(&pixels).unwrap();
        let t = |key: &str| take(&reference, &format!("{key}.{name}")).unwrap();
        assert_matches(
            &format!("embeds.{name}"),
            &out.image_embeds,
            &t("embeds"),
            1,
        );
        assert_matches(
            &format!("penultimate.{name}"),
            &out.penultimate,
            &t("penultimate"),
            1,
        );
    }
}

#[test]
fn a_wrong_input_size_is_refused_in_one_line() {
    let error = encoder()
        .forward(&tch::Tensor::zeros(
            [1, 3, 64, 64],
            (Kind::Float, Device::Cpu),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("pixels must be (batch, 3, 224, 224), got [1, 3, 64, 64]"),
        "{error}"
    );
}
