//! transformers' `T5EncoderModel`: token embedding, encoder blocks sharing
//! the first block's relative-position bias, final RMS norm.

use std::path::Path;

use sd_core::nn::Embedding;
use sd_core::weights::KeyMap;
use sd_core::DiffusersModel;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::T5Config;
use crate::error::{Result, T5Error};
use crate::layers::{Block, RmsNorm};

/// The T5 encoder (SD3's `text_encoder_3`, T5 v1.1 XXL).
pub struct T5EncoderModel {
    config: T5Config,
    shared: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    vs: VarStore,
}

// SAFETY: its `&self` methods (forward, config) read the weights and allocate new
// tensors. Tensors reached through `var_store()` share storage with the weights;
// writing them in place while other threads run the model is a race libtorch's own
// handles allow, outside what this marker promises.
unsafe impl sd_core::shared::ReadOnlyShared for T5EncoderModel {}

impl std::fmt::Debug for T5EncoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5EncoderModel")
            .field("config", &self.config)
            .finish()
    }
}

impl T5EncoderModel {
    /// The hidden states (batch, tokens, d_model) of `input_ids` (batch,
    /// tokens, int64), every token attending to every other (SD3 passes no
    /// attention mask). In f16 and bf16 the states come out in that dtype.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = check_ids(input_ids)?.to_device(self.vs.device());
        let hidden = self.shared.forward(&ids);
        let blocks = self.blocks.iter().map(Ok);
        let [hidden] = <[Tensor; 1]>::try_from(run_blocks(&self.config, vec![hidden], blocks)?)
            .map_err(|_| T5Error::Input("one input, one output".into()))?;
        Ok(self.final_norm.forward(&hidden))
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// `input_ids` if they are (batch, tokens) int64.
pub(crate) fn check_ids(input_ids: &Tensor) -> Result<&Tensor> {
    let size = input_ids.size();
    if size.len() != 2 || input_ids.kind() != Kind::Int64 {
        return Err(T5Error::Input(format!(
            "input ids must be (batch, tokens) int64, got {size:?} {:?}",
            input_ids.kind()
        )));
    }
    Ok(input_ids)
}

/// The encoder blocks on embedded tokens, in order, every block using the
/// first block's relative-position bias; the blocks held or read one at a
/// time (`StreamedT5`), each applied to every input in turn (each on its
/// own: the same operations as one input alone).
pub(crate) fn run_blocks<B: std::ops::Deref<Target = Block>>(
    config: &T5Config,
    mut hiddens: Vec<Tensor>,
    blocks: impl Iterator<Item = Result<B>>,
) -> Result<Vec<Tensor>> {
    let mut biases: Vec<Option<Tensor>> = hiddens.iter().map(|_| None).collect();
    for block in blocks {
        let block = block?;
        for (hidden, bias) in hiddens.iter_mut().zip(&mut biases) {
            let tokens = hidden.size()[1];
            let bias = match bias {
                Some(bias) => bias,
                empty => empty.insert(block.attention.position_bias(config, tokens).ok_or_else(
                    || T5Error::Input("block 0 has no relative-position embedding".into()),
                )?),
            };
            *hidden = block.forward(hidden, bias);
        }
    }
    Ok(hiddens)
}

/// The kind the feed-forward `wo` is made in: f32 in f16 models, as
/// transformers keeps it (`_keep_in_fp32_modules`).
pub(crate) fn wo_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Half => Kind::Float,
        other => other,
    }
}

impl DiffusersModel for T5EncoderModel {
    type Config = T5Config;
    type Error = T5Error;
    const WEIGHTS_STEM: &'static str = "model";

    fn read_config(path: &Path) -> Result<T5Config> {
        T5Config::from_file(path)
    }

    /// In f16, the feed-forward blocks' `wo` stays f32, as transformers
    /// keeps it (`_keep_in_fp32_modules`); in bf16 it is bf16 like the rest.
    fn new_in(config: &T5Config, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let encoder = &root / "encoder";
        let blocks = (0..config.num_layers)
            .map(|i| Block::new(&(&encoder / "block" / i), config, i, wo_kind(kind)))
            .collect();
        Ok(T5EncoderModel {
            shared: Embedding::new(&(&root / "shared"), config.vocab_size, config.d_model),
            blocks,
            final_norm: RmsNorm::new(
                &(&encoder / "final_layer_norm"),
                config.d_model,
                config.layer_norm_epsilon,
            ),
            config: config.clone(),
            vs,
        })
    }

    fn config(&self) -> &T5Config {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// `encoder.embed_tokens` is `shared` (tied): files saved by older
    /// transformers carry both, newer ones `shared` only, and some
    /// converted files (ComfyUI's) only `encoder.embed_tokens`; either fills it.
    fn folder_key(key: &str) -> KeyMap {
        match key {
            "encoder.embed_tokens.weight" => KeyMap::To("shared.weight".into()),
            other => KeyMap::To(other.to_string()),
        }
    }
}
