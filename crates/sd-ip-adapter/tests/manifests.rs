//! The released IP-Adapters and their image encoders, by name and shape
//! (reference/manifests/ip-adapter, written from the real configs by
//! reference/harness_ip_adapter.py): each adapter file's layout makes an
//! adapter (nothing allocated for real) that fits its full-size UNet and
//! its encoder; the encoders have exactly the real weight names; an SD1.5
//! adapter on SDXL's UNet is refused in one line.

use std::collections::BTreeMap;
use std::path::Path;

use sd_clip::{ClipVisionConfig, ClipVisionModel};
use sd_core::DiffusersModel;
use sd_ip_adapter::{AdapterKind, IpAdapter};
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use sd_unet::{UNet2DConditionModel, UNetConfig};
use tch::{Device, Kind};

fn manifest(rel: &str) -> serde_json::Value {
    let path = reference_dir().join("manifests").join(rel);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unet(family: &str) -> UNet2DConditionModel {
    let config = manifest(&format!("{family}/unet.json"))["config"].to_string();
    UNet2DConditionModel::new(&UNetConfig::from_json_str(&config).unwrap(), Device::Cpu).unwrap()
}

fn encoder(name: &str) -> ClipVisionModel {
    let value = manifest(&format!("ip-adapter/{name}.json"));
    let path = std::env::temp_dir().join(format!("sd-ip-adapter-{name}.json"));
    std::fs::write(&path, value["config"].to_string()).unwrap();
    let config = ClipVisionConfig::from_file(&path).unwrap();
    ClipVisionModel::new_in(&config, Device::Cpu, Kind::Float).unwrap()
}

fn adapter(name: &str) -> (IpAdapter, String, String) {
    let value = manifest(&format!("ip-adapter/{name}.json"));
    let shapes: BTreeMap<String, Vec<i64>> =
        serde_json::from_value(value["tensors"].clone()).unwrap();
    let path = Path::new(name);
    let adapter = IpAdapter::uninitialised(path, &shapes, Device::Cpu, Kind::Float).unwrap();
    let (family, encoder) = (value["family"].as_str(), value["encoder"].as_str());
    (adapter, family.unwrap().into(), encoder.unwrap().into())
}

#[test]
fn encoders_have_the_real_weight_names() {
    for name in ["image_encoder_vit-h", "image_encoder_vit-bigg"] {
        let value = manifest(&format!("ip-adapter/{name}.json"));
        let expected: Manifest = serde_json::from_value(value).unwrap();
        let built = Manifest::of_var_store(encoder(name).var_store());
        let diff = expected.diff(&built);
        assert!(diff.is_empty(), "{name}: {diff:?}");
    }
}

#[test]
fn released_adapters_fit_their_unet_and_encoder() {
    let (sd15, sdxl) = (unet("sd15"), unet("sdxl"));
    let unets = [("sd15", &sd15), ("sdxl", &sdxl)];
    let cases = [
        ("ip-adapter_sd15", AdapterKind::Plain),
        ("ip-adapter-plus_sd15", AdapterKind::Plus),
        ("ip-adapter_sdxl", AdapterKind::Plain),
        ("ip-adapter_sdxl_vit-h", AdapterKind::Plain),
        ("ip-adapter-plus_sdxl_vit-h", AdapterKind::Plus),
    ];
    for (name, kind) in cases {
        let (adapter, family, encoder_name) = adapter(name);
        assert_eq!(adapter.kind(), kind, "{name}");
        let (_, own) = unets.iter().find(|(f, _)| *f == family).unwrap();
        adapter.check_unet(own.cross_attention_layers()).unwrap();
        let config = ClipVisionConfig::clone(encoder(&encoder_name).config());
        let width = match kind {
            AdapterKind::Plain => config.projection_dim,
            _ => config.hidden_size,
        };
        assert_eq!(adapter.input_width(), width, "{name}");
        let (_, other) = unets.iter().find(|(f, _)| *f != family).unwrap();
        let error = adapter
            .check_unet(other.cross_attention_layers())
            .unwrap_err();
        assert!(
            error.to_string().contains("made for a UNet with"),
            "{error}"
        );
    }
    let (sd15_adapter, _, _) = adapter("ip-adapter_sd15");
    let error = sd15_adapter
        .check_unet(sdxl.cross_attention_layers())
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "ip-adapter_sd15: made for a UNet with 16 cross-attention layers (SD1.x/SD2.x), \
         this model has 70 (SDXL)"
    );
}
