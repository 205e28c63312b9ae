//! The T5 tokenizer from `tokenizer_3/tokenizer.json` (Unigram), with
//! SD3's rules: `</s>` appended, padded with `<pad>` and truncated to
//! `max_sequence_length` (256 by default, up to 512).

use std::path::{Path, PathBuf};

use crate::error::{Result, T5Error};

/// SD3's T5 tokenizer.
#[derive(Debug)]
pub struct T5Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pad_id: u32,
}

/// A prompt's ids and what truncation dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct T5Encoding {
    /// `max_length` ids: the prompt's, `</s>`, then `<pad>`s.
    pub ids: Vec<i64>,
    /// Tokens beyond `max_length` that were dropped (SD3 warns of them).
    pub dropped: usize,
}

impl T5Tokenizer {
    /// Reads `tokenizer.json` from `dir` (a `tokenizer_3` folder).
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("tokenizer.json");
        let fail = |message: String| T5Error::Tokenizer {
            path: path.clone(),
            message,
        };
        let mut inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| fail(e.to_string()))?;
        inner
            .with_truncation(None)
            .map_err(|e| fail(e.to_string()))?;
        inner.with_padding(None);
        let pad_id = inner
            .token_to_id("<pad>")
            .ok_or_else(|| fail("no <pad> token".into()))?;
        Ok(T5Tokenizer {
            inner,
            path,
            pad_id,
        })
    }

    /// `prompt` as SD3's pipeline tokenizes it for T5: with `</s>`,
    /// truncated and padded to `max_length`.
    pub fn encode(&self, prompt: &str, max_length: usize) -> Result<T5Encoding> {
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| T5Error::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot encode {prompt:?}: {e}"),
            })?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i as i64).collect();
        let dropped = ids.len().saturating_sub(max_length);
        if dropped > 0 {
            // transformers' truncation keeps the special token at the end
            let eos = ids[ids.len() - 1];
            ids.truncate(max_length - 1);
            ids.push(eos);
        }
        ids.resize(max_length, self.pad_id as i64);
        Ok(T5Encoding { ids, dropped })
    }
}
