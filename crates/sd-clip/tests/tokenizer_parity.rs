//! Token ids identical to transformers' CLIPTokenizer on 320 prompts
//! (reference/harness_outputs.py: punctuation, digits, unicode, accents,
//! CJK, emoji, repeated spaces, very long prompts), for the SD1 tokenizer
//! (pads with EOS) and the SD2 one (pads with "!").

use sd_clip::ClipTokenizer;
use sd_core::parity::{read_tensors, reference_dir, take};

#[test]
fn ids_match_transformers_on_every_prompt() {
    let outputs = reference_dir().join("fixtures/outputs");
    let prompts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(outputs.join("tokenizer_prompts.json")).unwrap(),
    )
    .unwrap();
    assert!(prompts.len() >= 300);
    let reference = read_tensors(outputs.join("tokenizer.safetensors")).unwrap();
    for (name, folder) in [("sd1", "tiny-sd1"), ("sd2", "tiny-sd2")] {
        let tokenizer = ClipTokenizer::from_folder(
            reference_dir()
                .join("fixtures")
                .join(folder)
                .join("tokenizer"),
        )
        .unwrap();
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
