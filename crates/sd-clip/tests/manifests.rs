//! The full-size SD1.5, SD2.1 and SDXL text encoders, built from their real
//! configs (uninitialised, so nothing is allocated for real), have exactly
//! the weight names and shapes of the real files.

use sd_clip::{ClipTextConfig, ClipTextModel};
use sd_core::DiffusersModel;
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use tch::Device;

#[test]
fn full_size_encoders_have_the_real_weight_names() {
    for (model, component) in [
        ("sd15", "text_encoder"),
        ("sd21", "text_encoder"),
        ("sdxl", "text_encoder"),
        ("sdxl", "text_encoder_2"),
    ] {
        let path = reference_dir().join(format!("manifests/{model}/{component}.json"));
        let expected = Manifest::read(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let config_path = std::env::temp_dir().join(format!("sd-clip-{model}-{component}.json"));
        std::fs::write(&config_path, value["config"].to_string()).unwrap();
        let config = ClipTextConfig::from_file(&config_path).unwrap();
        let built = ClipTextModel::new(&config, Device::Cpu).unwrap();
        let diff = expected.diff(&Manifest::of_var_store(built.var_store()));
        assert!(diff.is_empty(), "{model}/{component}: {diff:?}");
    }
}
