//! Full-size VAEs built from the real SD1.5, SD2.1, SDXL and SD3.5 configs have the
//! real weight names and shapes; files with the legacy attention names
//! (query/key/value/proj_attn) load too.

use sd_core::DiffusersModel;
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use sd_vae::{AutoencoderKL, VaeConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn full_size_vaes_have_the_real_weight_names() {
    for model in ["sd15", "sd21", "sdxl", "sd35"] {
        let path = reference_dir().join(format!("manifests/{model}/vae.json"));
        let expected = Manifest::read(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let config = VaeConfig::from_json_str(&value["config"].to_string()).unwrap();
        let vae = AutoencoderKL::new(&config, Device::Cpu).unwrap();
        let diff = expected.diff(&Manifest::of_var_store(vae.var_store()));
        assert!(diff.is_empty(), "{model}: {diff:?}");
    }
}

#[test]
fn legacy_attention_names_load() {
    let source = reference_dir().join("fixtures/tiny-sd1/vae");
    let tensors =
        Tensor::read_safetensors(source.join("diffusion_pytorch_model.safetensors")).unwrap();
    let renamed: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let legacy = name
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (legacy, t)
        })
        .collect();
    assert!(renamed.iter().any(|(n, _)| n.contains(".query.")));
    let dir = std::env::temp_dir().join(format!("sd-vae-legacy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(source.join("config.json"), dir.join("config.json")).unwrap();
    Tensor::write_safetensors(&renamed, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let legacy = AutoencoderKL::from_folder(&dir, Device::Cpu, Kind::Float, None).unwrap();
    let current = AutoencoderKL::from_folder(&source, Device::Cpu, Kind::Float, None).unwrap();
    let z = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let _guard = tch::no_grad_guard();
    assert_eq!(legacy.decode(&z).unwrap(), current.decode(&z).unwrap());
}
