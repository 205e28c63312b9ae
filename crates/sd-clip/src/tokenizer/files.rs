//! The files of a `tokenizer/` folder: tokenizer.json (the `tokenizers`
//! crate's format, which transformers 5 writes alone), or vocab.json with
//! merges.txt, and tokenizer_config.json. Errors name the file (and the line).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ClipError, Result};

#[derive(Debug, Deserialize, Default)]
pub(super) struct TokenizerConfig {
    pub(super) pad_token: Option<SpecialToken>,
    pub(super) model_max_length: Option<f64>,
}

/// tokenizer_config.json writes special tokens as strings or as objects.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SpecialToken {
    Text(String),
    Object { content: String },
}

impl SpecialToken {
    pub(super) fn content(&self) -> &str {
        match self {
            SpecialToken::Text(text) => text,
            SpecialToken::Object { content } => content,
        }
    }
}

pub(super) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ClipError::Core(sd_core::CoreError::io(path, e)))
}

/// One entry of tokenizer.json's `added_tokens`.
#[derive(Debug, Deserialize)]
pub(super) struct AddedTokenEntry {
    pub(super) id: u32,
    pub(super) content: String,
    #[serde(default)]
    pub(super) single_word: bool,
    #[serde(default)]
    pub(super) lstrip: bool,
    #[serde(default)]
    pub(super) rstrip: bool,
    #[serde(default = "yes")]
    pub(super) normalized: bool,
    #[serde(default)]
    pub(super) special: bool,
}

fn yes() -> bool {
    true
}

/// The parts of tokenizer.json a CLIP tokenizer needs; the pipeline itself
/// (normalizer, pre-tokenizer, post-processor) is CLIP's, built in `new`.
#[derive(Debug, Deserialize)]
struct TokenizerJson {
    model: BpeJson,
    #[serde(default)]
    added_tokens: Vec<AddedTokenEntry>,
}

#[derive(Debug, Deserialize)]
struct BpeJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: HashMap<String, u32>,
    merges: Vec<MergeJson>,
}

/// tokenizers writes merges as "left right" strings (older files) or as
/// `["left", "right"]` pairs (tokenizers 0.20 and later).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MergeJson {
    Text(String),
    Pair(String, String),
}

pub(super) type Parsed = (
    HashMap<String, u32>,
    Vec<(String, String)>,
    Vec<AddedTokenEntry>,
);

pub(super) fn read_tokenizer_json(text: &str, path: &Path) -> Result<Parsed> {
    let bad = |message: String| ClipError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let parsed: TokenizerJson = serde_json::from_str(text)
        .map_err(|e| bad(format!("not a tokenizers JSON file with a BPE model: {e}")))?;
    if let Some(kind) = parsed.model.kind.as_deref().filter(|k| *k != "BPE") {
        return Err(bad(format!("model type '{kind}': a CLIP tokenizer is BPE")));
    }
    let vocab = parsed.model.vocab;
    let mut merges = Vec::with_capacity(parsed.model.merges.len());
    for (index, merge) in parsed.model.merges.into_iter().enumerate() {
        let (left, right) = match merge {
            MergeJson::Pair(left, right) => (left, right),
            MergeJson::Text(line) => match line.split_once(' ') {
                Some((l, r)) if !r.contains(' ') => (l.to_string(), r.to_string()),
                _ => {
                    return Err(bad(format!(
                        "merge {index}: expected \"left right\", found '{line}'"
                    )))
                }
            },
        };
        for part in [&left, &right] {
            if !vocab.contains_key(part) {
                return Err(bad(format!(
                    "merge {index}: '{part}' is not in model.vocab"
                )));
            }
        }
        merges.push((left, right));
    }
    if merges.is_empty() {
        return Err(bad("no merges in model.merges".to_string()));
    }
    Ok((vocab, merges, parsed.added_tokens))
}

pub(super) fn read_vocab(text: &str, path: &Path) -> Result<HashMap<String, u32>> {
    serde_json::from_str(text).map_err(|e| ClipError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("not a JSON object of token -> id: {e}"),
    })
}

/// merges.txt: a `#version` header, then one "left right" pair per line,
/// both in the vocabulary. Errors name the line.
pub(super) fn read_merges(
    text: &str,
    path: &Path,
    vocab: &HashMap<String, u32>,
) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if (index == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let bad = |message: String| ClipError::Tokenizer {
            path: PathBuf::from(format!("{}:{}", path.display(), index + 1)),
            message,
        };
        let mut parts = line.split(' ');
        let (Some(left), Some(right), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(format!(
                "expected two tokens separated by one space, found '{line}'"
            )));
        };
        for part in [left, right] {
            if !vocab.contains_key(part) {
                return Err(bad(format!("'{part}' is not in vocab.json")));
            }
        }
        merges.push((left.to_string(), right.to_string()));
    }
    if merges.is_empty() {
        return Err(ClipError::Tokenizer {
            path: path.to_path_buf(),
            message: "no merges".to_string(),
        });
    }
    Ok(merges)
}

pub(super) fn read_config(path: &Path) -> Result<TokenizerConfig> {
    if !path.exists() {
        return Ok(TokenizerConfig::default());
    }
    serde_json::from_str(&read_text(path)?).map_err(|e| ClipError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
