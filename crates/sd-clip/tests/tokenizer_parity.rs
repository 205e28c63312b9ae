//! Token ids identical to transformers' CLIPTokenizer on 320 prompts
//! (reference/harness_outputs.py: punctuation, digits, unicode, accents,
//! CJK, emoji, repeated spaces, very long prompts), for tokenizer folders in
//! every layout: vocab.json + merges.txt (tiny-sd1, pads with EOS),
//! tokenizer.json only as transformers 5 saves it (tiny-sd2 and both SDXL
//! tokenizers; SD2 and SDXL's second pad with "!"), both (tiny-sd1-inpaint),
//! and tokenizer.json with added textual-inversion tokens.

use sd_clip::ClipTokenizer;
use sd_testkit::parity::{read_tensors, reference_dir, take};

const FOLDERS: [(&str, &str); 6] = [
    ("sd1", "tiny-sd1/tokenizer"),
    ("sd2", "tiny-sd2/tokenizer"),
    ("sdxl_1", "tiny-sdxl/tokenizer"),
    ("sdxl_2", "tiny-sdxl/tokenizer_2"),
    ("inpaint", "tiny-sd1-inpaint/tokenizer"),
    ("added", "tokenizer-added"),
];

#[test]
fn ids_match_transformers_on_every_prompt() {
    let outputs = reference_dir().join("fixtures/outputs");
    let prompts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(outputs.join("tokenizer_prompts.json")).unwrap(),
    )
    .unwrap();
    assert!(prompts.len() >= 300);
    let reference = read_tensors(outputs.join("tokenizer.safetensors")).unwrap();
    let added_prompts = [
        "a <cat-toy> on a mat",
        "<cat-toy><cat-toy>",
        "A <CAT-TOY> in <Style Word>",
        "<cat-toy>s and <cat-toys>",
        "in the style of <style word>",
        "<cat-toy",
    ];
    for (name, folder) in FOLDERS {
        let tokenizer =
            ClipTokenizer::from_folder(reference_dir().join("fixtures").join(folder)).unwrap();
        let prompts: Vec<String> = if name == "added" {
            prompts
                .iter()
                .cloned()
                .chain(added_prompts.iter().map(|p| p.to_string()))
                .collect()
        } else {
            prompts.clone()
        };
        let expected =
            Vec::<Vec<i64>>::try_from(take(&reference, &format!("{name}.input_ids")).unwrap())
                .unwrap();
        let lengths =
            Vec::<i64>::try_from(take(&reference, &format!("{name}.untruncated_length")).unwrap())
                .unwrap();
        let mut mismatches = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let encoded = tokenizer.encode(prompt).unwrap();
            let full = tokenizer.encode_full(prompt).unwrap();
            if encoded.ids != expected[i] || full.len() as i64 != lengths[i] {
                mismatches.push(format!(
                    "{name} prompt {i} {prompt:?}:\n  ours   {:?}\n  theirs {:?}",
                    encoded.ids, expected[i]
                ));
            }
            let over = (lengths[i] - 77).max(0) as usize;
            assert_eq!(encoded.dropped, over, "{name} prompt {i}");
        }
        assert!(
            mismatches.is_empty(),
            "{} of {} prompts differ:\n{}",
            mismatches.len(),
            prompts.len(),
            mismatches
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The vocabulary built into the crate (`vocab/`, packaged with it) is the
/// one the reference harness derives from open_clip's BPE file.
#[test]
fn the_builtin_vocabulary_is_the_harness_one() {
    let fixture = reference_dir().join("fixtures/tokenizer");
    let read = |name: &str| std::fs::read_to_string(fixture.join(name)).unwrap();
    assert!(read("vocab.json") == sd_clip::tokenizer::BUILTIN_VOCAB);
    assert!(read("merges.txt") == sd_clip::tokenizer::BUILTIN_MERGES);
}
