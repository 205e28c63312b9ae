//! Quantizing and writing: the same values through `sd_gguf::quantize` give
//! the bytes `gguf.quants.quantize` wrote into the gguf package's own file
//! (reference/harness_gguf.py: seeded rows with zeros, one large value,
//! tiny values and negatives), and a file written here reads back as written.

use std::path::PathBuf;

use safetensors::SafeTensors;
use sd_gguf::{quantize, GgmlType, GgufFile, TensorPlan, Value, WRITABLE};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../reference/fixtures")
}

fn source() -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join("outputs/gguf_dequant.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let source = tensors.tensor("source").unwrap();
    assert_eq!(source.shape(), [6, 64]);
    (source.data().chunks_exact(4))
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn values_quantize_to_the_gguf_package_bytes() {
    let file = GgufFile::open(fixtures().join("gguf/blocks.gguf")).unwrap();
    let values = source();
    for kind in WRITABLE {
        let name = format!("quantized.{}", kind.name());
        let tensor = file.tensors.iter().find(|t| t.name == name).unwrap();
        let ours = quantize(kind, &values, &name).unwrap();
        assert_eq!(ours, file.bytes(tensor), "{name}");
    }
    let k = quantize(GgmlType::Q4_K, &values[..256], "w").unwrap_err();
    assert!(k.to_string().contains("w: GGML type Q4_K"), "{k}");
}

#[test]
fn a_written_file_reads_back() {
    let values = source();
    let path = std::env::temp_dir().join(format!("sd-gguf-write-{}.gguf", std::process::id()));
    let plans: Vec<TensorPlan> = (WRITABLE.iter())
        .map(|&kind| TensorPlan {
            name: format!("t.{}", kind.name()),
            shape: vec![6, 64],
            kind,
        })
        .collect();
    let metadata = [
        (
            "general.architecture".to_string(),
            Value::String("sd1".into()),
        ),
        ("sd-rs.answer".to_string(), Value::U64(42)),
    ];
    let mut data = |i: usize| quantize(plans[i].kind, &values, &plans[i].name);
    sd_gguf::write(&path, &metadata, &plans, &mut data).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.metadata.get("sd-rs.answer"), Some(&Value::U64(42)));
    for (plan, tensor) in plans.iter().zip(&file.tensors) {
        assert_eq!(
            (&tensor.name, &tensor.shape, tensor.kind),
            (&plan.name, &plan.shape, plan.kind)
        );
        let written = quantize(plan.kind, &values, "again").unwrap();
        assert_eq!(file.bytes(tensor), written, "{}", plan.name);
    }
    // a plan whose rows are not whole blocks is refused by name
    let bad = [TensorPlan {
        name: "odd".into(),
        shape: vec![2, 3],
        kind: GgmlType::Q8_0,
    }];
    let error = sd_gguf::write(&path, &[], &bad, &mut |_| Ok(vec![])).unwrap_err();
    assert!(error.to_string().contains("odd: rows"), "{error}");
    std::fs::remove_file(&path).unwrap();
}
