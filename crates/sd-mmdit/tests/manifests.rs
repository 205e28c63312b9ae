//! The full-size SD3.5 Medium (MMDiT-X: dual attention in blocks 0-12, qk
//! norms, a 384x384 position table) and Large (38 blocks, qk norms)
//! transformers built from their real configs have exactly the weight
//! names and shapes of the real files (uninitialised: nothing allocated).

use sd_core::DiffusersModel;
use sd_mmdit::{MmditConfig, SD3Transformer2DModel};
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use tch::{Device, Kind};

#[test]
fn full_size_sd35_transformers_have_the_real_weight_names() {
    for model in ["transformer_medium", "transformer_large"] {
        let path = reference_dir().join(format!("manifests/sd35/{model}.json"));
        let expected = Manifest::read(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let config = MmditConfig::parse(&value["config"].to_string(), &path).unwrap();
        let built = SD3Transformer2DModel::new_in(&config, Device::Cpu, Kind::BFloat16).unwrap();
        let diff = expected.diff(&Manifest::of_var_store(built.var_store()));
        assert!(diff.is_empty(), "{model}: {diff:?}");
    }
}

#[test]
fn a_config_that_cannot_be_built_names_the_field() {
    let path = std::path::Path::new("transformer/config.json");
    let text = r#"{"num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2,
        "joint_attention_dim": 12, "caption_projection_dim": 20, "pooled_projection_dim": 10,
        "pos_embed_max_size": 12}"#;
    let err = MmditConfig::parse(text, path).unwrap_err().to_string();
    assert!(
        err.contains("caption_projection_dim") && err.contains("16"),
        "{err}"
    );
    let err = MmditConfig::parse(
        &text.replace("20", "16").replace(
            "\"num_layers\": 2",
            "\"num_layers\": 2, \"dual_attention_layers\": [5]",
        ),
        path,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("dual_attention_layers"), "{err}");
}

/// Stability's single-file layout of the same two transformers
/// (`manifests/sd35/single_file_*.json`, made with the harness's reverse
/// mapping and checked by diffusers' conversion back): the config read from
/// the file's shapes is the real config.json's, and every key maps to a
/// weight of the diffusers manifest with its shape (q/k/v split, AdaLN
/// halves swapped), none left over, none missing.
#[test]
fn stability_single_files_map_onto_the_real_weights() {
    use std::collections::BTreeMap;
    for name in ["medium", "large"] {
        let dir = reference_dir().join("manifests/sd35");
        let file = Manifest::read(dir.join(format!("single_file_{name}.json"))).unwrap();
        let path = dir.join(format!("transformer_{name}.json"));
        let expected = Manifest::read(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let config = MmditConfig::parse(&value["config"].to_string(), &path).unwrap();
        let shapes: BTreeMap<String, Vec<i64>> = file.tensors.clone().into_iter().collect();
        assert_eq!(
            sd_mmdit::sai::config_from_shapes(&shapes).unwrap(),
            config,
            "{name}"
        );
        let actual = file.mapped(&|key| sd_mmdit::sai::map(key, config.num_layers));
        let diff = expected.diff(&actual);
        assert!(diff.is_empty(), "{name}: {diff:?}");
    }
}
