//! The gguf package's own file of every supported type (reference/harness_gguf.py)
//! against its `gguf.quants.dequantize`: the same f32 bits, the same shapes.

use std::path::PathBuf;

use safetensors::SafeTensors;
use sd_gguf::{GgmlType, GgufFile, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../reference/fixtures")
}

#[test]
fn every_type_dequantizes_to_the_gguf_package_bits() {
    let file = GgufFile::open(fixtures().join("gguf/blocks.gguf")).unwrap();
    assert_eq!(
        file.metadata.get("general.architecture"),
        Some(&Value::String("sd-rs-test".into()))
    );
    let bytes = std::fs::read(fixtures().join("outputs/gguf_dequant.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    // (and "source", the values the quantized ones came from)
    assert_eq!(file.tensors.len() + 1, expected.len());
    let mut kinds = Vec::new();
    for tensor in &file.tensors {
        let want = expected.tensor(&tensor.name).unwrap();
        let shape: Vec<u64> = want.shape().iter().map(|&d| d as u64).collect();
        assert_eq!(tensor.shape, shape, "{}", tensor.name);
        let ours = file.dequantize(tensor).unwrap();
        let theirs: Vec<u32> = want
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ours: Vec<u32> = ours.iter().map(|v| v.to_bits()).collect();
        assert_eq!(ours, theirs, "{} ({:?})", tensor.name, tensor.kind);
        kinds.push(tensor.kind);
    }
    for kind in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} not covered");
    }
}
