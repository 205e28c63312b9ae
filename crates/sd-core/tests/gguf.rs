//! GGUF weight files: a layer's weight in quantized GGML blocks stays packed
//! in the file's bytes and is decoded on each use to exactly the values
//! `gguf.quants.dequantize` gives (reference/harness_gguf.py's blocks of
//! every type); any other variable is decoded at load.

use sd_core::packed::{ggml_type, logical_size};
use sd_core::weights::{load_mapped, KeyMap, MappedFile, Stored};
use sd_testkit::parity::{read_tensors, reference_dir};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn blocks() -> MappedFile {
    MappedFile::open(reference_dir().join("fixtures/gguf/blocks.gguf")).unwrap()
}

fn expected() -> std::collections::HashMap<String, Tensor> {
    let outputs = reference_dir().join("fixtures/outputs/gguf_dequant.safetensors");
    read_tensors(outputs).unwrap().into_iter().collect()
}

#[test]
fn packed_layer_weights_decode_per_use_as_gguf_does() {
    let _guard = tch::no_grad_guard();
    let (file, expected) = (blocks(), expected());
    let mut packed = 0;
    for entry in file.entries() {
        let Stored::Ggml(ggml) = entry.stored else {
            continue;
        };
        let want = &expected[&entry.name];
        let (rows, cols) = (entry.shape[0], entry.shape[1]);
        let vs = VarStore::new(Device::Cpu);
        let linear = sd_core::nn::Linear::new(&(vs.root() / "layer"), cols, rows, false);
        let map = |k: &str| match k == entry.name {
            true => KeyMap::To("layer.weight".into()),
            false => KeyMap::Skip,
        };
        load_mapped(&vs, &[file.path()], &map, false).unwrap();
        assert_eq!(ggml_type(&linear.weight), Some(ggml), "{}", entry.name);
        assert_eq!(logical_size(&linear.weight), [rows, cols]);
        tch::manual_seed(1);
        let x = Tensor::randn([3, cols], (Kind::Float, Device::Cpu));
        let exact = x.linear::<Tensor>(want, None);
        assert!(linear.forward(&x).equal(&exact), "{} f32", entry.name);
        let x = x.to_kind(Kind::BFloat16);
        let rounded = x.linear::<Tensor>(&want.to_kind(Kind::BFloat16), None);
        assert!(linear.forward(&x).equal(&rounded), "{} bf16", entry.name);
        let x = x.to_kind(Kind::Half);
        let rounded = x.linear::<Tensor>(&want.to_kind(Kind::Half), None);
        assert!(linear.forward(&x).equal(&rounded), "{} f16", entry.name);
        packed += 1;
    }
    // every quantized type, as quantized values and raw blocks
    assert_eq!(packed, 15);
}

#[test]
fn other_variables_take_decoded_values_at_load() {
    let _guard = tch::no_grad_guard();
    let (file, expected) = (blocks(), expected());
    for name in ["quantized.Q4_1", "raw.Q6_K", "quantized.F16", "raw.Q3_K"] {
        let shape = &file.entry(name).unwrap().shape;
        for kind in [Kind::Float, Kind::BFloat16] {
            let mut vs = VarStore::new(Device::Cpu);
            vs.set_kind(kind);
            let table = sd_core::nn::param(&vs.root(), "table", shape);
            let map = |k: &str| match k == name {
                true => KeyMap::To("table".into()),
                false => KeyMap::Skip,
            };
            load_mapped(&vs, &[file.path()], &map, false).unwrap();
            assert_eq!(table.kind(), kind, "{name}");
            assert!(
                table.equal(&expected[name].to_kind(kind)),
                "{name} {kind:?}"
            );
        }
        // and read on its own, as f32 values
        assert!(file.read(name).unwrap().equal(&expected[name]), "{name}");
    }
}

#[test]
fn a_packed_weight_of_the_wrong_shape_is_reported_by_name() {
    let file = blocks();
    let vs = VarStore::new(Device::Cpu);
    sd_core::nn::Linear::new(&(vs.root() / "layer"), 32, 6, false);
    let map = |k: &str| match k == "quantized.Q8_0" {
        true => KeyMap::To("layer.weight".into()),
        false => KeyMap::Skip,
    };
    let error = load_mapped(&vs, &[file.path()], &map, false).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("layer.weight"), "{message}");
    assert!(message.contains("[6, 64]"), "{message}");
}

/// The torch-operation decoder (what a weight on an accelerator uses) gives
/// the same bits as the host's for every legacy type; the K-quants are left
/// to the host.
#[test]
fn torch_op_decoding_equals_the_host_decoding() {
    let _guard = tch::no_grad_guard();
    let (file, expected) = (blocks(), expected());
    let mut checked = 0;
    for entry in file.entries() {
        let Stored::Ggml(ggml) = entry.stored else {
            continue;
        };
        let packed = file.read_entry(entry).unwrap();
        match sd_core::packed::unpack_with_torch_ops(&packed, Kind::Float) {
            Some(values) => {
                assert!(values.equal(&expected[&entry.name]), "{}", entry.name);
                checked += 1;
            }
            None => assert!(entry.name.contains("_K"), "{} ({ggml:?})", entry.name),
        }
    }
    // Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: quantized values and raw blocks
    assert_eq!(checked, 10);
}
