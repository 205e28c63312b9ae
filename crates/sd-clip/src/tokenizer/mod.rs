//! The CLIP tokenizer of a model folder's `tokenizer/` (tokenizer.json, or
//! vocab.json + merges.txt), built on the
//! `tokenizers` crate exactly as transformers' `CLIPTokenizer` builds it:
//! NFC, runs of whitespace to one space, lowercase; CLIP's split pattern;
//! byte-level BPE with `</w>` word ends; BOS ... EOS; padded to 77 with the
//! model's pad token (SD1.x pads with EOS, SD2.x with "!", id 0).

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{ClipError, Result};

mod files;

use files::{
    read_config, read_merges, read_text, read_tokenizer_json, read_vocab, AddedTokenEntry,
    SpecialToken,
};

/// CLIP's pre-tokenization pattern (specials, contractions, letters, single digits, other runs).
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// The start-of-text token.
pub const BOS: &str = "<|startoftext|>";
/// The end-of-text token (also SD1's padding).
pub const EOS: &str = "<|endoftext|>";

/// The ids of one prompt, padded or truncated to the context length.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenIds {
    /// BOS, tokens, EOS, padding: exactly `max_length` ids.
    pub ids: Vec<i64>,
    /// Prompt tokens cut off to fit (0 when it fit).
    pub dropped: usize,
}

/// CLIP's byte-level BPE tokenizer, as transformers' `CLIPTokenizer`: lower-cased,
/// whitespace-cleaned text, padded or truncated to 77 ids with start and end tokens.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos_id: i64,
    eos_id: i64,
    pad_id: i64,
    max_length: usize,
    /// Multi-vector textual-inversion tokens: `t` -> "t t_1 ... t_{n-1}".
    expansions: HashMap<String, String>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

impl ClipTokenizer {
    /// Reads a tokenizer folder in any layout real repos use: `tokenizer.json`
    /// (what transformers 5 writes, and transformers 4 writes beside the
    /// others; it wins when both are there, as in transformers), or
    /// `vocab.json` + `merges.txt`; plus `tokenizer_config.json` /
    /// `special_tokens_map.json` when present. Added tokens listed in
    /// tokenizer.json (textual-inversion words) are matched whole, with
    /// their ids.
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let (json, vocab_json, merges_txt) = (
            dir.join("tokenizer.json"),
            dir.join("vocab.json"),
            dir.join("merges.txt"),
        );
        let (vocab, merges, added) = if json.is_file() {
            read_tokenizer_json(&read_text(&json)?, &json)?
        } else if vocab_json.is_file() || merges_txt.is_file() {
            let vocab = read_vocab(&read_text(&vocab_json)?, &vocab_json)?;
            let merges = read_merges(&read_text(&merges_txt)?, &merges_txt, &vocab)?;
            (vocab, merges, Vec::new())
        } else {
            return Err(ClipError::Tokenizer {
                path: dir.to_path_buf(),
                message: "no tokenizer files: looked for tokenizer.json, or vocab.json and \
                          merges.txt"
                    .to_string(),
            });
        };
        let mut config = read_config(&dir.join("special_tokens_map.json"))?;
        let main = read_config(&dir.join("tokenizer_config.json"))?;
        if main.pad_token.is_some() {
            config.pad_token = main.pad_token;
        }
        config.model_max_length = main.model_max_length.or(config.model_max_length);
        let pad = config
            .pad_token
            .as_ref()
            .map_or(EOS, SpecialToken::content)
            .to_string();
        let max_length = match config.model_max_length {
            Some(n) if (3.0..=1e6).contains(&n) => n as usize,
            _ => 77,
        };
        let mut tokenizer = Self::new(vocab, merges, &pad, max_length, dir)?;
        tokenizer.add_tokens(&added, &json)?;
        Ok(tokenizer)
    }

    /// The real CLIP BPE vocabulary, built into the crate (for single-file
    /// checkpoints, which carry no tokenizer), with `pad` as the pad token
    /// ("<|endoftext|>" for SD1.x and SDXL's first encoder, "!" for OpenCLIP).
    pub fn builtin(pad: &str) -> Result<Self> {
        let origin = Path::new("(built-in CLIP tokenizer)");
        let vocab = read_vocab(BUILTIN_VOCAB, &origin.join("vocab.json"))?;
        let merges = read_merges(BUILTIN_MERGES, &origin.join("merges.txt"), &vocab)?;
        Self::new(vocab, merges, pad, 77, origin)
    }

    fn new(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        pad: &str,
        max_length: usize,
        dir: &Path,
    ) -> Result<Self> {
        let id = |token: &str, file: &str| {
            vocab
                .get(token)
                .map(|&i| i as i64)
                .ok_or_else(|| ClipError::Tokenizer {
                    path: dir.join(file),
                    message: format!("token '{token}' is not in the vocabulary"),
                })
        };
        let (bos_id, eos_id) = (id(BOS, "vocab.json")?, id(EOS, "vocab.json")?);
        let pad_id = id(pad, "tokenizer_config.json")?;
        let build_error = |e: tokenizers::Error| ClipError::Tokenizer {
            path: dir.to_path_buf(),
            message: e.to_string(),
        };
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .unk_token(EOS.to_string())
            .fuse_unk(false)
            .build()
            .map_err(build_error)?;
        let mut tokenizer = Tokenizer::new(bpe);
        let whitespace =
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(build_error)?;
        tokenizer.with_normalizer(Some(Normalizers::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])));
        let split = Split::new(
            SplitPattern::Regex(SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(build_error)?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        let post = RobertaProcessing::new(
            (EOS.to_string(), eos_id as u32),
            (BOS.to_string(), bos_id as u32),
        )
        .trim_offsets(false)
        .add_prefix_space(false);
        tokenizer.with_post_processor(Some(post));
        // transformers registers these as special added tokens, matched
        // before normalization wherever they occur in a prompt.
        let specials: Vec<AddedToken> = [BOS, EOS, pad]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        tokenizer.add_special_tokens(&specials);
        Ok(ClipTokenizer {
            tokenizer,
            bos_id,
            eos_id,
            pad_id,
            max_length,
            expansions: HashMap::new(),
        })
    }

    /// Registers tokenizer.json's added tokens (beyond BOS, EOS and the pad
    /// token, already special) and checks each got the id the file gives it.
    fn add_tokens(&mut self, added: &[AddedTokenEntry], file: &Path) -> Result<()> {
        for entry in added {
            if [BOS, EOS].contains(&entry.content.as_str()) || entry.id == self.pad_id as u32 {
                continue;
            }
            let token = AddedToken::from(entry.content.clone(), entry.special)
                .single_word(entry.single_word)
                .lstrip(entry.lstrip)
                .rstrip(entry.rstrip)
                .normalized(entry.normalized);
            if entry.special {
                self.tokenizer.add_special_tokens(&[token]);
            } else {
                self.tokenizer.add_tokens(&[token]);
            }
            let got = self.tokenizer.token_to_id(&entry.content);
            if got != Some(entry.id) {
                return Err(ClipError::Tokenizer {
                    path: file.to_path_buf(),
                    message: format!(
                        "added token '{}' has id {}, but ids after the vocabulary run on \
                         from {} in order (got {got:?})",
                        entry.content,
                        entry.id,
                        self.tokenizer.get_vocab_size(false)
                    ),
                });
            }
        }
        Ok(())
    }

    /// The start-of-text token id.
    pub fn bos_id(&self) -> i64 {
        self.bos_id
    }

    /// The end-of-text token id.
    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }

    /// The padding token id (end-of-text for SD1 and SDXL's first tower, "!" for OpenCLIP).
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// The context length (77 for every SD text encoder).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// How many ids the tokenizer knows (vocabulary plus added tokens): the
    /// id the next added token gets.
    pub fn len(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Always false: every tokenizer has at least BOS and EOS.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `token` is in the vocabulary or among the added tokens.
    pub fn contains(&self, token: &str) -> bool {
        self.tokenizer.token_to_id(token).is_some()
    }

    /// Adds textual-inversion tokens `t`, `t_1`, ... (one per vector),
    /// matched whole as diffusers' `tokenizer.add_tokens` matches them;
    /// returns the first new id (the others follow in order). A prompt's
    /// `t` then stands for all of them. Fails, adding nothing, when one is
    /// already known.
    pub fn add_embedding_tokens(&mut self, tokens: &[String]) -> Result<i64> {
        let first = tokens
            .first()
            .ok_or_else(|| ClipError::invalid("token", "no tokens given"))?;
        for token in tokens {
            if self.contains(token) {
                return Err(ClipError::invalid(
                    "token",
                    format!("'{token}' is already in the tokenizer; choose another token"),
                ));
            }
        }
        let next = self.len() as i64;
        for (i, token) in tokens.iter().enumerate() {
            self.tokenizer
                .add_tokens(&[AddedToken::from(token.clone(), false)]);
            let got = self.tokenizer.token_to_id(token).map(i64::from);
            if got != Some(next + i as i64) {
                return Err(ClipError::invalid(
                    "token",
                    format!("'{token}' got id {got:?}, expected {}", next + i as i64),
                ));
            }
        }
        if tokens.len() > 1 {
            self.expansions.insert(first.clone(), tokens.join(" "));
        }
        Ok(next)
    }

    /// A prompt with each multi-vector token written out as all its tokens,
    /// as diffusers' `maybe_convert_prompt` does it (a plain text replace
    /// of each such token the prompt's tokens contain).
    fn expand_embeddings<'p>(&self, prompt: &'p str) -> Result<std::borrow::Cow<'p, str>> {
        if self.expansions.is_empty() {
            return Ok(prompt.into());
        }
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| ClipError::Encode {
                prompt: prompt.chars().take(60).collect(),
                message: e.to_string(),
            })?;
        let mut expanded = prompt.to_string();
        let mut seen = std::collections::HashSet::new();
        for token in encoding.get_tokens() {
            if let (Some(all), true) = (self.expansions.get(token), seen.insert(token)) {
                expanded = expanded.replace(token.as_str(), all);
            }
        }
        Ok(expanded.into())
    }

    /// BOS, the prompt's tokens, EOS, without padding or truncation.
    pub fn encode_full(&self, prompt: &str) -> Result<Vec<i64>> {
        let prompt = &*self.expand_embeddings(prompt)?;
        let encoding = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| ClipError::Encode {
                prompt: prompt.chars().take(60).collect(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// The pipeline's encoding: truncated to keep BOS and EOS, then padded.
    /// An empty prompt is BOS, EOS, padding.
    pub fn encode(&self, prompt: &str) -> Result<TokenIds> {
        let full = self.encode_full(prompt)?;
        let content = &full[1..full.len() - 1];
        let room = self.max_length - 2;
        let kept = content.len().min(room);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&content[..kept]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        Ok(TokenIds {
            ids,
            dropped: content.len() - kept,
        })
    }

    /// Prompt weighting: ids as [`ClipTokenizer::encode`] plus one weight per
    /// id (1 for BOS, EOS and padding); see [`crate::weighting`].
    pub fn encode_weighted(&self, prompt: &str) -> Result<(TokenIds, Vec<f64>)> {
        let (tokens, weights) = self.weighted_tokens(prompt)?;
        let room = self.max_length - 2;
        let kept = tokens.len().min(room);
        let mut ids = vec![self.bos_id];
        ids.extend_from_slice(&tokens[..kept]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        let mut w = vec![1.0];
        w.extend_from_slice(&weights[..kept]);
        w.resize(self.max_length, 1.0);
        Ok((
            TokenIds {
                ids,
                dropped: tokens.len() - kept,
            },
            w,
        ))
    }

    /// The prompt's tokens (no BOS/EOS) and their weights.
    pub fn weighted_tokens(&self, prompt: &str) -> Result<(Vec<i64>, Vec<f64>)> {
        let (mut tokens, mut weights) = (Vec::new(), Vec::new());
        for run in crate::weighting::parse(prompt)? {
            let full = self.encode_full(&run.text)?;
            let content = &full[1..full.len() - 1];
            tokens.extend_from_slice(content);
            weights.extend(std::iter::repeat_n(run.weight, content.len()));
        }
        Ok((tokens, weights))
    }

    /// Long-prompt mode: the prompt's tokens in windows of `max_length - 2`,
    /// each wrapped in BOS/EOS and padded, at least `min_windows` of them
    /// (pad the negative prompt to the positive prompt's count).
    pub fn encode_windows(&self, prompt: &str, min_windows: usize) -> Result<Vec<TokenIds>> {
        let full = self.encode_full(prompt)?;
        let content = &full[1..full.len() - 1];
        let room = self.max_length - 2;
        let count = content.len().div_ceil(room).max(min_windows).max(1);
        Ok((0..count)
            .map(|w| {
                let chunk = content
                    .get(w * room..((w + 1) * room).min(content.len()))
                    .unwrap_or(&[]);
                let mut ids = vec![self.bos_id];
                ids.extend_from_slice(chunk);
                ids.push(self.eos_id);
                ids.resize(self.max_length, self.pad_id);
                TokenIds { ids, dropped: 0 }
            })
            .collect())
    }
}

/// CLIP's BPE vocabulary (openai/clip-vit-large-patch14), built in for single-file checkpoints.
pub const BUILTIN_VOCAB: &str = include_str!("../../vocab/vocab.json");
/// CLIP's BPE merges, built in with [`BUILTIN_VOCAB`].
pub const BUILTIN_MERGES: &str = include_str!("../../vocab/merges.txt");
