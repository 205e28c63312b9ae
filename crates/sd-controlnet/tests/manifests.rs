//! Full-size ControlNets built from the real SD1.5 and SDXL release configs
//! have the real weight names and shapes (reference/manifests, made by
//! diffusers on the meta device), and every tensor of the original
//! single-file SD1.5 releases (`control_model.*`) maps onto exactly those
//! names and shapes, with the config read off the file's shapes; the rest
//! of a whole ControlLDM checkpoint (the first releases carried the SD
//! model too) is skipped.

use std::collections::BTreeMap;

use sd_controlnet::ldm::{config_from_shapes, is_ldm, LdmControlNetKeys};
use sd_controlnet::{ControlNetConfig, ControlNetModel, DiffusersModel};
use sd_core::weights::KeyMap;
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use sd_unet::UNetConfig;
use tch::{Device, Kind};

fn config_of(path: &std::path::Path) -> String {
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value["config"].to_string()
}

#[test]
fn full_size_controlnets_have_the_real_weight_names() {
    for (model, width) in [("sd15", 768), ("sdxl", 2048)] {
        let path = reference_dir().join(format!("manifests/{model}/controlnet.json"));
        let expected = Manifest::read(&path).unwrap();
        let config = ControlNetConfig::from_json_str(&config_of(&path)).unwrap();
        assert_eq!(config.cross_attention_dim().unwrap(), width);
        let net = ControlNetModel::new_in(&config, Device::Cpu, Kind::Half).unwrap();
        let diff = expected.diff(&Manifest::of_var_store(net.var_store()));
        assert!(diff.is_empty(), "{model}: {diff:?}");
    }
}

#[test]
fn original_single_file_names_map_onto_diffusers_names() {
    let manifests = reference_dir().join("manifests/sd15");
    let original = Manifest::read(manifests.join("controlnet_single_file.json")).unwrap();
    let diffusers = Manifest::read(manifests.join("controlnet.json")).unwrap();
    let unet = UNetConfig::from_json_str(&config_of(&manifests.join("unet.json"))).unwrap();
    assert!(is_ldm(&original.tensors));
    let config = config_from_shapes(&original.tensors, &unet).unwrap();
    assert_eq!(
        config.control.conditioning_embedding_out_channels,
        vec![16, 32, 96, 256]
    );
    let keys = LdmControlNetKeys::new(&config, &original.tensors).unwrap();
    let mut mapped = BTreeMap::new();
    for (name, shape) in &original.tensors {
        match keys.map(name) {
            KeyMap::To(to) => assert!(mapped.insert(to, shape.clone()).is_none(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let mapped = Manifest {
        tensors: mapped,
        optional: BTreeMap::new(),
    };
    let diff = diffusers.diff(&mapped);
    assert!(diff.is_empty(), "{diff:?}");
    for other in [
        "model.diffusion_model.input_blocks.0.0.weight",
        "first_stage_model.decoder.conv_in.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "betas",
    ] {
        assert!(matches!(keys.map(other), KeyMap::Skip), "{other}");
    }
    // Without the prefix anywhere, unknown names are reported, not skipped.
    let bare: BTreeMap<String, Vec<i64>> = original
        .tensors
        .iter()
        .map(|(k, v)| {
            (
                k.trim_start_matches("control_model.").to_string(),
                v.clone(),
            )
        })
        .collect();
    let bare_keys = LdmControlNetKeys::new(&config, &bare).unwrap();
    assert!(
        matches!(bare_keys.map("zero_convs.0.0.weight"), KeyMap::To(n) if n == "controlnet_down_blocks.0.weight")
    );
    assert!(matches!(bare_keys.map("betas"), KeyMap::To(n) if n.contains("(ldm)")));
    // And the model built from the inferred config has those names.
    let net = ControlNetModel::new_in(&config, Device::Cpu, Kind::Half).unwrap();
    assert!(diffusers
        .diff(&Manifest::of_var_store(net.var_store()))
        .is_empty());
}
