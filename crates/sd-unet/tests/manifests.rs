//! The full-size SD1.5, SD2.1 and SDXL UNets built from their real configs
//! have exactly the weight names and shapes of the real files (parameters
//! are created uninitialised, so nothing is really allocated).

use sd_core::DiffusersModel;
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use sd_unet::{UNet2DConditionModel, UNetConfig};
use tch::{Device, Kind};

#[test]
fn full_size_unets_have_the_real_weight_names() {
    for model in ["sd15", "sd21", "sdxl"] {
        let path = reference_dir().join(format!("manifests/{model}/unet.json"));
        let expected = Manifest::read(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let config = UNetConfig::from_json_str(&value["config"].to_string()).unwrap();
        let unet = UNet2DConditionModel::new(&config, Device::Cpu).unwrap();
        let diff = expected.diff(&Manifest::of_var_store(unet.var_store()));
        assert!(diff.is_empty(), "{model}: {diff:?}");
        // Built straight in f16, as loading now does: the same names, and
        // every parameter created f16.
        let half = UNet2DConditionModel::new_in(&config, Device::Cpu, Kind::Half).unwrap();
        let diff = expected.diff(&Manifest::of_var_store(half.var_store()));
        assert!(diff.is_empty(), "{model} f16: {diff:?}");
        let vars = half.var_store().variables();
        assert!(vars.values().all(|t| t.kind() == Kind::Half), "{model}");
    }
}
