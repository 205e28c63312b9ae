//! Bad tokenizer and weight files give errors naming the file, line or tensor.

use sd_core::DiffusersModel;
use std::path::{Path, PathBuf};

use sd_clip::{ClipTextModel, ClipTokenizer};
use sd_testkit::parity::reference_dir;
use tch::{Device, Kind};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-clip-bad-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_tokenizer(to: &Path) {
    let from = reference_dir().join("fixtures/tiny-sd1/tokenizer");
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn malformed_merges_name_file_and_line() {
    let dir = scratch("merges");
    copy_tokenizer(&dir);
    let merges = dir.join("merges.txt");
    let text = std::fs::read_to_string(&merges).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[5] = "onlyonetoken";
    std::fs::write(&merges, lines.join("\n")).unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(
        err.contains("merges.txt:6") && err.contains("onlyonetoken"),
        "{err}"
    );

    lines[5] = "zzzq qqqz";
    std::fs::write(&merges, lines.join("\n")).unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(
        err.contains("merges.txt:6") && err.contains("not in vocab.json"),
        "{err}"
    );
}

#[test]
fn missing_or_broken_vocab_names_the_file() {
    let dir = scratch("vocab");
    copy_tokenizer(&dir);
    std::fs::write(dir.join("vocab.json"), "[1, 2").unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    std::fs::remove_file(dir.join("vocab.json")).unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
}

#[test]
fn empty_prompt_is_bos_eos_padding() {
    let t =
        ClipTokenizer::from_folder(reference_dir().join("fixtures/tiny-sd2/tokenizer")).unwrap();
    let ids = t.encode("").unwrap();
    assert_eq!(&ids.ids[..3], &[49406, 49407, 0]);
    assert_eq!(ids.ids.len(), 77);
    assert_eq!(ids.dropped, 0);
}

#[test]
fn long_prompts_truncate_or_split_into_windows() {
    let t =
        ClipTokenizer::from_folder(reference_dir().join("fixtures/tiny-sd1/tokenizer")).unwrap();
    let prompt = "cat ".repeat(200);
    let truncated = t.encode(&prompt).unwrap();
    assert_eq!(truncated.dropped, 125);
    assert_eq!(truncated.ids[76], 49407);
    let windows = t.encode_windows(&prompt, 1).unwrap();
    assert_eq!(windows.len(), 3);
    for w in &windows {
        assert_eq!((w.ids[0], w.ids.len()), (49406, 77));
    }
    // The third window holds the last 50 tokens, then EOS and padding.
    assert_eq!(windows[2].ids[51], 49407);
    // A short negative prompt padded to the same number of windows.
    assert_eq!(t.encode_windows("blurry", 3).unwrap().len(), 3);
}

#[test]
fn wrongly_shaped_weights_are_named() {
    let dir = scratch("weights");
    let source = reference_dir().join("fixtures/tiny-sd1/text_encoder");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["intermediate_size"] = serde_json::json!(24);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        source.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let err = ClipTextModel::from_folder(&dir, Device::Cpu, Kind::Float, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("text_model.encoder.layers.0.mlp.fc1.weight: model [24, 8], file [16, 8]"),
        "{err}"
    );

    config["hidden_act"] = serde_json::json!("relu");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = ClipTextModel::from_folder(&dir, Device::Cpu, Kind::Float, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'hidden_act'") && err.contains("relu"),
        "{err}"
    );
}

#[test]
fn builtin_tokenizer_equals_the_reference_folder() {
    let folder =
        ClipTokenizer::from_folder(reference_dir().join("fixtures/tiny-sd2/tokenizer")).unwrap();
    let builtin = ClipTokenizer::builtin("!").unwrap();
    for prompt in ["a photo of a cat!", "", "Zoë café 東京 🐱"] {
        assert_eq!(
            builtin.encode(prompt).unwrap(),
            folder.encode(prompt).unwrap(),
            "{prompt}"
        );
    }
}

#[test]
fn folder_with_neither_layout_names_folder_and_files() {
    let dir = scratch("neither");
    std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(
        err.contains(&dir.display().to_string())
            && err.contains("tokenizer.json")
            && err.contains("vocab.json")
            && err.contains("merges.txt"),
        "{err}"
    );
}

#[test]
fn broken_tokenizer_json_names_the_file() {
    let dir = scratch("json");
    std::fs::write(
        dir.join("tokenizer.json"),
        r#"{"model": {"type": "WordPiece", "vocab": {}, "merges": []}}"#,
    )
    .unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("WordPiece"),
        "{err}"
    );
    std::fs::write(dir.join("tokenizer.json"), "{").unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    // an added token whose id does not follow the vocabulary
    let json =
        std::fs::read_to_string(reference_dir().join("fixtures/tokenizer-added/tokenizer.json"))
            .unwrap()
            .replace("\"id\": 49409", "\"id\": 50000");
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(
        err.contains("<Style Word>") && err.contains("50000"),
        "{err}"
    );
}
