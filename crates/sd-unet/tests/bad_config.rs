//! Unsupported or inconsistent config values fail at load, naming the field.

use sd_core::DiffusersModel;
use sd_unet::{UNet2DConditionModel, UNetConfig};

fn tiny() -> serde_json::Value {
    let path = sd_testkit::parity::reference_dir().join("fixtures/tiny-sd1/unet/config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn error_for(field: &str, value: serde_json::Value) -> String {
    let mut config = tiny();
    config[field] = value;
    UNetConfig::from_json_str(&config.to_string())
        .unwrap_err()
        .to_string()
}

#[test]
fn unsupported_values_name_the_field() {
    for (field, value) in [
        ("class_embed_type", serde_json::json!("timestep")),
        ("time_cond_proj_dim", serde_json::json!(256)),
        ("resnet_time_scale_shift", serde_json::json!("scale_shift")),
        (
            "down_block_types",
            serde_json::json!(["SimpleCrossAttnDownBlock2D", "DownBlock2D"]),
        ),
        ("attention_head_dim", serde_json::json!([2, 2, 2])),
        ("norm_num_groups", serde_json::json!(5)),
        ("addition_embed_type", serde_json::json!("image")),
    ] {
        let err = error_for(field, value.clone());
        assert!(err.contains(&format!("'{field}")), "{field}={value}: {err}");
    }
}

#[test]
fn a_missing_weight_file_names_the_folder() {
    let dir = std::env::temp_dir().join(format!("sd-unet-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), tiny().to_string()).unwrap();
    let err = UNet2DConditionModel::from_folder(&dir, tch::Device::Cpu, tch::Kind::Float, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    let err =
        UNet2DConditionModel::from_folder(&dir, tch::Device::Cpu, tch::Kind::Float, Some("fp16"))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("diffusion_pytorch_model.fp16.safetensors"),
        "{err}"
    );
}

#[test]
fn wrong_inputs_are_errors() {
    let dir = sd_testkit::parity::reference_dir().join("fixtures/tiny-sdxl/unet");
    let unet =
        UNet2DConditionModel::from_folder(dir, tch::Device::Cpu, tch::Kind::Float, None).unwrap();
    let t = tch::Tensor::from(10i64);
    let ctx = tch::Tensor::zeros([1, 77, 16], (tch::Kind::Float, tch::Device::Cpu));
    let ok = tch::Tensor::zeros([1, 4, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
    // SDXL without its size/text conditioning.
    assert!(unet
        .forward(&ok, &t, &ctx, None)
        .unwrap_err()
        .to_string()
        .contains("text_embeds"));
    let channels = tch::Tensor::zeros([1, 9, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
    assert!(unet
        .forward(&channels, &t, &ctx, None)
        .unwrap_err()
        .to_string()
        .contains("9 channels"));
    // Any size runs (odd ones too, as in diffusers); an empty one is refused.
    let empty = tch::Tensor::zeros([1, 4, 0, 16], (tch::Kind::Float, tch::Device::Cpu));
    assert!(unet
        .forward(&empty, &t, &ctx, None)
        .unwrap_err()
        .to_string()
        .contains("0x16 is empty"));
}
