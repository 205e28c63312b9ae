//! The full-size T5 v1.1 XXL encoder of SD3 (`text_encoder_3`), built from
//! its real config, has exactly the weight names and shapes of the real
//! files (parameters are created uninitialised: nothing is allocated), in
//! bf16 and in f16 (where the `wo` projections are made f32).

use sd_core::DiffusersModel;
use sd_t5::{T5Config, T5EncoderModel};
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use tch::{Device, Kind};

#[test]
fn the_full_size_t5_has_the_real_weight_names() {
    let path = reference_dir().join("manifests/sd35/text_encoder_3.json");
    let expected = Manifest::read(&path).unwrap();
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let config = T5Config::parse(&value["config"].to_string(), &path).unwrap();
    assert_eq!(
        (config.d_model, config.num_layers, config.num_heads),
        (4096, 24, 64)
    );
    for kind in [Kind::BFloat16, Kind::Half] {
        let model = T5EncoderModel::new_in(&config, Device::Cpu, kind).unwrap();
        let diff = expected.diff(&Manifest::of_var_store(model.var_store()));
        assert!(diff.is_empty(), "{kind:?}: {diff:?}");
        for (name, tensor) in model.var_store().variables() {
            let want = match (kind, name.ends_with("DenseReluDense.wo.weight")) {
                (Kind::Half, true) => Kind::Float,
                _ => kind,
            };
            assert_eq!(tensor.kind(), want, "{name}");
        }
    }
}
