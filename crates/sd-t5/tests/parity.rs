//! T5 against transformers (reference/harness_sd3.py, write_t5): the
//! tokenizer's ids as SD3's pipeline makes them (padding and truncation to
//! 16 and 32), and the encoder's hidden states in f32, f16 (with `wo` in
//! f32) and bf16, for six prompts and a 160-token input whose distances go
//! past `relative_attention_max_distance`. Bounds: the error model's, one
//! evaluation; bit for bit on the machine that made the references.

use sd_core::DiffusersModel;
use sd_t5::{T5EncoderModel, T5Tokenizer};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{Device, Kind, Tensor};

fn fixtures() -> std::path::PathBuf {
    reference_dir().join("fixtures")
}

#[test]
fn the_tokenizer_pads_and_truncates_as_sd3_does() {
    let reference = read_tensors(fixtures().join("outputs/sd3_t5.safetensors")).unwrap();
    let prompts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("outputs/sd3_t5_prompts.json")).unwrap(),
    )
    .unwrap();
    let tokenizer = T5Tokenizer::from_folder(fixtures().join("sd3/tokenizer_3")).unwrap();
    for max_length in [16usize, 32] {
        let expected = take(&reference, &format!("t5.ids{max_length}")).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let encoding = tokenizer.encode(prompt, max_length).unwrap();
            let want = Vec::<i64>::try_from(expected.get(i as i64)).unwrap();
            assert_eq!(encoding.ids, want, "{prompt:?} at {max_length}");
        }
    }
    // What truncation drops is counted (SD3 warns of it).
    let full = tokenizer.encode(&prompts[5], 1000).unwrap();
    let length = full.ids.iter().filter(|&&id| id != 0).count();
    assert!(length > 16);
    assert_eq!(
        tokenizer.encode(&prompts[5], 16).unwrap().dropped,
        length - 16
    );
}

#[test]
fn the_encoder_matches_transformers_in_every_dtype() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let reference = read_tensors(fixtures().join("outputs/sd3_t5.safetensors")).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    for (name, kind) in [
        ("f32", Kind::Float),
        ("f16", Kind::Half),
        ("bf16", Kind::BFloat16),
    ] {
        let model = T5EncoderModel::from_folder(
            fixtures().join("sd3/text_encoder_3"),
            Device::Cpu,
            kind,
            None,
        )
        .unwrap();
        for (ids, out) in [("t5.ids32", "hidden"), ("t5.long_ids", "long_hidden")] {
            let hidden = model.forward(&t(ids)).unwrap();
            assert_eq!(hidden.kind(), kind, "{name}");
            let expected = t(&format!("t5.{name}.{out}"));
            assert_matches(&format!("t5 {name} {out}"), &hidden, &expected, 1);
        }
    }
}

#[test]
fn bad_input_ids_are_an_error() {
    let model = T5EncoderModel::from_folder(
        fixtures().join("sd3/text_encoder_3"),
        Device::Cpu,
        Kind::Float,
        None,
    )
    .unwrap();
    let floats = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
    let err = model.forward(&floats).unwrap_err().to_string();
    assert!(err.contains("int64"), "{err}");
}

/// T5 streamed from its file a block at a time gives the resident model's
/// states bit for bit, in every dtype (the same operations), and a file
/// that does not fit its config is refused when the encoder is made.
#[test]
fn the_streamed_encoder_equals_the_resident_one() {
    use sd_t5::{StreamedT5, T5Config, T5Keys};
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let dir = fixtures().join("sd3/text_encoder_3");
    let config = T5Config::from_file(dir.join("config.json")).unwrap();
    let files = vec![dir.join("model.safetensors")];
    let ids = Tensor::from_slice(&[5i64, 9, 3, 17, 1, 0, 0, 0]).view([1, 8]);
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
        let resident = T5EncoderModel::from_folder(&dir, Device::Cpu, kind, None).unwrap();
        let streamed = StreamedT5::new(
            &config,
            files.clone(),
            T5Keys::Transformers,
            Device::Cpu,
            kind,
        )
        .unwrap();
        let (a, b) = (
            resident.forward(&ids).unwrap(),
            streamed.forward(&ids).unwrap(),
        );
        assert_eq!(a.kind(), b.kind());
        assert!(a.equal(&b), "{kind:?}");
    }
    let mut wider = config.clone();
    wider.d_ff += 1;
    let error = StreamedT5::new(
        &wider,
        files,
        T5Keys::Transformers,
        Device::Cpu,
        Kind::Float,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("do not fit its config") && error.contains("model ["),
        "{error}"
    );
}
