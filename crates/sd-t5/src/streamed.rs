//! T5 read from its files a part at a time while it encodes: the embedding,
//! then each block, then the final norm, each dropped before the next is
//! read. For low-memory pipelines: T5-XXL is about 9.5 GB in bf16, and this
//! way at most one block (about 0.4 GB) of it is in memory, at the price of
//! reading the weights (from the page cache, mostly) on every encoding. The
//! same operations as [`T5EncoderModel`]: the same results, bit for bit.

use std::path::PathBuf;

use sd_core::nn::Embedding;
use sd_core::weights::{load_mapped, KeyMap, MappedFile};
use sd_core::DiffusersModel;
use tch::nn::{Path, VarStore};
use tch::{Device, Kind, Tensor};

use crate::config::T5Config;
use crate::error::{Result, T5Error};
use crate::layers::{Block, RmsNorm};
use crate::model::{check_ids, run_blocks, wo_kind, T5EncoderModel};

/// How the files name T5's weights.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum T5Keys {
    /// transformers' names (a `text_encoder_3/` folder, ComfyUI's
    /// `t5xxl_*.safetensors`).
    Transformers,
    /// transformers' names under a prefix (Stability's single files:
    /// `text_encoders.t5xxl.transformer.`).
    Prefixed(String),
    /// llama.cpp's names (`enc.blk.0.attn_q.weight`, `token_embd.weight`):
    /// city96's GGUF T5 encoders (`t5-v1_1-xxl-encoder-Q8_0.gguf`).
    Llama,
}

impl T5Keys {
    /// The model's name (and transform) for the file's `key`.
    pub fn map(&self, key: &str) -> KeyMap {
        match self {
            T5Keys::Transformers => T5EncoderModel::folder_key(key),
            T5Keys::Prefixed(prefix) => match key.strip_prefix(prefix.as_str()) {
                Some(rest) => T5EncoderModel::folder_key(rest),
                None => KeyMap::Skip,
            },
            // (unknown names stay recognisable, to be reported as unexpected)
            T5Keys::Llama => {
                KeyMap::To(from_llama(key).unwrap_or_else(|| format!("(llama.cpp) {key}")))
            }
        }
    }
}

/// transformers' name of a T5 encoder weight named as llama.cpp names it.
fn from_llama(key: &str) -> Option<String> {
    match key {
        "token_embd.weight" => return Some("shared.weight".into()),
        "enc.output_norm.weight" => return Some("encoder.final_layer_norm.weight".into()),
        _ => {}
    }
    let (block, rest) = key.strip_prefix("enc.blk.")?.split_once('.')?;
    let (part, tail) = rest.split_once('.')?;
    let module = match part {
        "attn_q" => "layer.0.SelfAttention.q",
        "attn_k" => "layer.0.SelfAttention.k",
        "attn_v" => "layer.0.SelfAttention.v",
        "attn_o" => "layer.0.SelfAttention.o",
        "attn_rel_b" => "layer.0.SelfAttention.relative_attention_bias",
        "attn_norm" => "layer.0.layer_norm",
        "ffn_gate" => "layer.1.DenseReluDense.wi_0",
        "ffn_up" => "layer.1.DenseReluDense.wi_1",
        "ffn_down" => "layer.1.DenseReluDense.wo",
        "ffn_norm" => "layer.1.layer_norm",
        _ => return None,
    };
    Some(format!("encoder.block.{block}.{module}.{tail}"))
}

/// A T5 encoder whose weights stay in their files between encodings.
#[derive(Debug)]
pub struct StreamedT5 {
    config: T5Config,
    files: Vec<PathBuf>,
    keys: T5Keys,
    device: Device,
    kind: Kind,
}

impl StreamedT5 {
    /// The encoder of `config` in `files`, computing on `device` in `kind`.
    /// Every weight's name and shape is checked now (from the files'
    /// headers), so a bad file fails here, not at the first prompt.
    pub fn new(
        config: &T5Config,
        files: Vec<PathBuf>,
        keys: T5Keys,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let streamed = StreamedT5 {
            config: config.clone(),
            files,
            keys,
            device,
            kind,
        };
        streamed.check_files()?;
        Ok(streamed)
    }

    /// The model's config.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// As [`T5EncoderModel::forward`].
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let mut states = self.forward_each(std::slice::from_ref(input_ids))?;
        states
            .pop()
            .ok_or_else(|| T5Error::Input("one input, one output".into()))
    }

    /// Several inputs in one pass over the files (a prompt and its negative:
    /// the weights read once), each computed on its own, as
    /// [`StreamedT5::forward`] would.
    pub fn forward_each(&self, input_ids: &[Tensor]) -> Result<Vec<Tensor>> {
        let ids: Vec<Tensor> = input_ids
            .iter()
            .map(|ids| Ok(check_ids(ids)?.to_device(self.device)))
            .collect::<Result<_>>()?;
        let (vocab, d) = (self.config.vocab_size, self.config.d_model);
        let shared = self.part(|root| Embedding::new(&(root / "shared"), vocab, d))?;
        let hiddens = ids.iter().map(|ids| shared.forward(ids)).collect();
        drop(shared);
        let blocks = (0..self.config.num_layers)
            .map(|i| self.part(|root| self.block(root, i)).map(Box::new));
        let hiddens = run_blocks(&self.config, hiddens, blocks)?;
        let eps = self.config.layer_norm_epsilon;
        let norm = self.part(|root| {
            let path = root / "encoder" / "final_layer_norm";
            RmsNorm::new(&path, d, eps)
        })?;
        Ok(hiddens.iter().map(|h| norm.forward(h)).collect())
    }

    fn block(&self, root: &Path<'_>, index: i64) -> Block {
        let path = root / "encoder" / "block" / index;
        Block::new(&path, &self.config, index, wo_kind(self.kind))
    }

    /// One part of the model, built under a var store of its own and filled
    /// from the files (the rest of their tensors left unread).
    fn part<T>(&self, build: impl FnOnce(&Path<'_>) -> T) -> Result<T> {
        let mut vs = VarStore::new(self.device);
        vs.set_kind(self.kind);
        let part = build(&vs.root());
        load_mapped(&vs, &self.files, &|k| self.keys.map(k), true)?;
        Ok(part)
    }

    /// Every variable of the whole model has a tensor of its shape in the
    /// files (shapes only: nothing is read).
    fn check_files(&self) -> Result<()> {
        let mut found = std::collections::HashMap::new();
        for file in &self.files {
            for (key, shape) in MappedFile::open(file)?.shapes()? {
                found.extend(self.keys.map(&key).targets(&shape));
            }
        }
        // The whole model uninitialised: address space, never touched.
        let model = T5EncoderModel::new_in(&self.config, Device::Cpu, self.kind)?;
        let mut bad: Vec<String> = model
            .var_store()
            .variables()
            .into_iter()
            .filter_map(|(name, tensor)| match found.get(&name) {
                Some(shape) if *shape == tensor.size() => None,
                Some(shape) => Some(format!("{name}: model {:?}, file {shape:?}", tensor.size())),
                None => Some(format!("{name}: missing")),
            })
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        bad.sort();
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        Err(T5Error::Input(format!(
            "{}: the T5 weights do not fit its config: {} ({} in all)",
            files.join(", "),
            bad[0],
            bad.len()
        )))
    }
}
