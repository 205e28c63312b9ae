//! The full-size FLUX.1 [dev] and [schnell] transformers built from their
//! real configs have exactly the weight names and shapes of the real files
//! (uninitialised: nothing allocated); Black Forest Labs' single-file layout
//! of both (`manifests/flux/single_file_*.json`, made with the harness's
//! reverse mapping and checked by diffusers' own conversion back) gives the
//! real config from its shapes and maps every key onto a weight of the
//! diffusers manifest with its shape, none left over, none missing.

use std::collections::BTreeMap;

use sd_core::DiffusersModel;
use sd_flux::{bfl, FluxConfig, FluxTransformer2DModel};
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use tch::{Device, Kind};

fn diffusers(name: &str) -> (Manifest, FluxConfig) {
    let path = reference_dir().join(format!("manifests/flux/transformer_{name}.json"));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let config = FluxConfig::parse(&value["config"].to_string(), &path).unwrap();
    (Manifest::read(&path).unwrap(), config)
}

#[test]
fn full_size_flux_transformers_have_the_real_weight_names() {
    for name in ["dev", "schnell"] {
        let (expected, config) = diffusers(name);
        let built = FluxTransformer2DModel::new_in(&config, Device::Cpu, Kind::BFloat16).unwrap();
        let diff = expected.diff(&Manifest::of_var_store(built.var_store()));
        assert!(diff.is_empty(), "{name}: {diff:?}");
    }
}

#[test]
fn bfl_single_files_map_onto_the_real_weights() {
    for name in ["dev", "schnell"] {
        let (expected, config) = diffusers(name);
        let dir = reference_dir().join("manifests/flux");
        let file = Manifest::read(dir.join(format!("single_file_{name}.json"))).unwrap();
        let shapes: BTreeMap<String, Vec<i64>> = file.tensors.clone().into_iter().collect();
        assert!(bfl::is_flux(shapes.keys()));
        assert_eq!(bfl::config_from_shapes(&shapes).unwrap(), config, "{name}");
        let diff = expected.diff(&file.mapped(&|key| bfl::map(key, &config)));
        assert!(diff.is_empty(), "{name}: {diff:?}");
    }
}
