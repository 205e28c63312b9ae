//! Prompts to the embeddings a UNet is conditioned on, as diffusers' SD,
//! SD2 and SDXL pipelines compute them: which layer, `clip_skip`, long
//! prompts in 75-token windows, and optional prompt weighting.

use sd_core::DiffusersModel;
use tch::Tensor;

use crate::encoder::ClipTextModel;
use crate::error::{ClipError, Result};
use crate::tokenizer::{ClipTokenizer, TokenIds};
use crate::weighting;

/// Which hidden state conditions the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingLayer {
    /// SD1.x/SD2.x: the last layer after the final layer norm; with
    /// `clip_skip` n > 0, layer -(n+1) through the final layer norm.
    Final,
    /// SDXL: layer -(clip_skip + 2), without the final norm.
    Penultimate,
}

/// How prompts are encoded: clip skip, long prompts, weighting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptOptions {
    /// Skip this many last layers (diffusers' `clip_skip`).
    pub clip_skip: usize,
    /// Split prompts longer than 75 tokens into windows instead of truncating.
    pub long_prompts: bool,
    /// Parse "(word:1.3)" weighting syntax.
    pub weighting: bool,
}

/// One prompt's conditioning.
#[derive(Debug)]
pub struct PromptEmbedding {
    /// (1, 77 * windows, width).
    pub hidden: Tensor,
    /// (1, projection or width): the pooled (or projected) EOS state of the first window.
    pub pooled: Tensor,
    /// Prompt tokens cut off by truncation.
    pub dropped: usize,
    /// How many 77-token windows the prompt took (1 unless `long_prompts`).
    pub windows: usize,
}

/// Encodes `prompt` with one tokenizer/encoder pair. `min_windows` pads a
/// long-prompt encoding (use the positive prompt's count for the negative).
pub fn encode(
    tokenizer: &ClipTokenizer,
    model: &ClipTextModel,
    prompt: &str,
    layer: EmbeddingLayer,
    options: PromptOptions,
    min_windows: usize,
) -> Result<PromptEmbedding> {
    let layers = model.config().num_hidden_layers as usize;
    let needed = options.clip_skip
        + if layer == EmbeddingLayer::Penultimate {
            2
        } else {
            1
        };
    if needed > layers + 1 {
        return Err(ClipError::invalid(
            "clip_skip",
            format!(
                "{} is more than this {layers}-layer encoder has",
                options.clip_skip
            ),
        ));
    }
    // 1. token windows and per-token weights
    let (windows, weights): (Vec<TokenIds>, Vec<Vec<f64>>) = if options.long_prompts {
        let ids = tokenizer.encode_windows(prompt, min_windows)?;
        let weights = if options.weighting {
            window_weights(tokenizer, prompt, ids.len())?
        } else {
            vec![vec![1.0; tokenizer.max_length()]; ids.len()]
        };
        (ids, weights)
    } else if options.weighting {
        let (ids, w) = tokenizer.encode_weighted(prompt)?;
        (vec![ids], vec![w])
    } else {
        (
            vec![tokenizer.encode(prompt)?],
            vec![vec![1.0; tokenizer.max_length()]],
        )
    };
    let dropped = windows.iter().map(|w| w.dropped).sum();
    // 2. encode every window in one batch; pick the layer
    let ids: Vec<Vec<i64>> = windows.iter().map(|w| w.ids.clone()).collect();
    let out = model.forward(&Tensor::from_slice2(&ids))?;
    let n = out.hidden_states.len();
    let hidden = match layer {
        EmbeddingLayer::Final if options.clip_skip == 0 => out.last_hidden_state.shallow_clone(),
        EmbeddingLayer::Final => {
            model.final_layer_norm(&out.hidden_states[n - 1 - options.clip_skip])
        }
        EmbeddingLayer::Penultimate => out.hidden_states[n - 2 - options.clip_skip].shallow_clone(),
    };
    // 3. windows side by side along the token axis, then weighting
    let width = hidden.size()[2];
    let mut hidden = hidden.reshape([1, -1, width]);
    if options.weighting {
        let flat: Vec<f32> = weights.iter().flatten().map(|&w| w as f32).collect();
        hidden = weighting::apply(&hidden, &Tensor::from_slice(&flat).unsqueeze(0));
    }
    let pooled = out.text_embeds.unwrap_or(out.pooled).get(0).unsqueeze(0);
    Ok(PromptEmbedding {
        hidden,
        pooled,
        dropped,
        windows: windows.len(),
    })
}

/// Per-window weights for long-prompt mode (BOS/EOS/padding weigh 1).
fn window_weights(tokenizer: &ClipTokenizer, prompt: &str, count: usize) -> Result<Vec<Vec<f64>>> {
    let (_, weights) = tokenizer.weighted_tokens(prompt)?;
    let room = tokenizer.max_length() - 2;
    Ok((0..count)
        .map(|w| {
            let mut row = vec![1.0];
            row.extend(weights.iter().skip(w * room).take(room));
            row.resize(tokenizer.max_length(), 1.0);
            row
        })
        .collect())
}
