//! The tiny autoencoder (TAESD) against diffusers' `AutoencoderTiny` on a
//! random tiny config (reference/harness_taesd.py): encode and decode within
//! one evaluation's error bound (exact in `SD_PARITY=exact` mode), the
//! original release layout loading to the same weights, and a folder that
//! is neither layout refused with its path named.

use sd_core::DiffusersModel;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use sd_vae::AutoencoderTiny;
use tch::{Device, Kind};

#[test]
fn tiny_autoencoder_matches_diffusers_in_both_layouts() {
    let fixtures = reference_dir().join("fixtures");
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures.join("outputs/taesd.safetensors")).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    let _guard = tch::no_grad_guard();
    let folder = fixtures.join("taesd/tiny-taesd");
    let diffusers = AutoencoderTiny::from_dir(&folder, Device::Cpu, Kind::Float).unwrap();
    let original =
        AutoencoderTiny::from_dir(&fixtures.join("taesd/original"), Device::Cpu, Kind::Float)
            .unwrap();
    for (name, vae) in [("folder", &diffusers), ("original", &original)] {
        let encoded = vae.encode(&t("encode.input")).unwrap();
        assert_matches(&format!("{name} encode"), &encoded, &t("encode"), 1);
        let decoded = vae.decode(&t("decode.input")).unwrap();
        assert_matches(&format!("{name} decode"), &decoded, &t("decode"), 1);
        // Random weights still give a decode with some spread, not a constant.
        assert!(
            decoded.std(true).double_value(&[]) > 0.01,
            "{name}: flat decode"
        );
    }
    let a = diffusers.var_store().variables();
    let b = original.var_store().variables();
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        assert!(tensor.equal(&b[name]), "{name} differs between the layouts");
    }
}

#[test]
fn a_folder_of_neither_layout_is_refused_with_its_path() {
    let dir = std::env::temp_dir().join(format!("sd-vae-tiny-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = AutoencoderTiny::from_dir(&dir, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sd-vae-tiny-empty") && err.contains("config.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_release_architecture_has_the_real_weight_names() {
    for model in ["sd15", "sdxl"] {
        let path = reference_dir().join(format!("manifests/{model}/taesd.json"));
        let expected = sd_testkit::manifest::Manifest::read(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let config = sd_vae::TinyVaeConfig::from_json_str(&value["config"].to_string()).unwrap();
        assert_eq!(config.downscale(), 8);
        let vae = AutoencoderTiny::new_in(&config, Device::Cpu, Kind::Half).unwrap();
        let actual = sd_testkit::manifest::Manifest::of_var_store(vae.var_store());
        let diff = expected.diff(&actual);
        assert!(diff.is_empty(), "{model}: {diff:?}");
    }
}
