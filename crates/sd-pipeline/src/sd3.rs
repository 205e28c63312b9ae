//! Stable Diffusion 3's text conditioning, as diffusers'
//! `StableDiffusion3Pipeline.encode_prompt` makes it: CLIP-L's and CLIP-G's
//! penultimate hidden states side by side, padded with zeros to T5's width,
//! then T5's states after them on the token axis; the two projected pooled
//! embeddings side by side. Without T5 (a user without the memory for it),
//! its states are zeros, as diffusers' are when `text_encoder_3` is None.
//! [`StableDiffusion`](crate::StableDiffusion) runs SD3 folders through
//! the same code; [`Sd3TextEncoders`] is the encoders without the rest.

use std::path::Path;

use sd_clip::{encode, EmbeddingLayer, PromptOptions};
use sd_mmdit::MmditConfig;
use tch::{Device, Kind, Tensor};

use crate::components::{load_tower, TextTower};
use crate::error::{PipelineError, Result};
use crate::generate::Conditioning;
use crate::t5::{load_t5, T5Loading, T5Tower};

/// SD3's three text encoders (T5 optional).
#[derive(Debug)]
pub struct Sd3TextEncoders {
    clip_l: TextTower,
    clip_g: TextTower,
    t5: Option<T5Tower>,
    /// The transformer's text width (T5's d_model).
    joint_dim: i64,
}

impl Sd3TextEncoders {
    /// The encoders of the SD3 pipeline folder `dir` on `device` in `dtype`;
    /// `with_t5: false` leaves T5 out (zeros in its place).
    pub fn from_folder(dir: &Path, device: Device, dtype: Kind, with_t5: bool) -> Result<Self> {
        let tower = |sub: &str| load_tower(dir, sub, (device, dtype), None, None);
        let transformer = dir.join("transformer/config.json");
        let joint_dim = MmditConfig::from_file(&transformer)
            .map_err(|e| PipelineError::model(&transformer, e.to_string()))?
            .joint_attention_dim;
        let loading = match with_t5 {
            true => T5Loading::Resident,
            false => T5Loading::Skip,
        };
        let t5 = load_t5((dir, "_3"), loading, (device, dtype), None, None)?;
        Ok(Sd3TextEncoders {
            clip_l: tower("")?,
            clip_g: tower("_2")?,
            t5,
            joint_dim,
        })
    }

    /// One prompt's conditioning: hidden (1, 77 + max_sequence_length,
    /// joint width) and pooled (1, CLIP-L's + CLIP-G's projection widths).
    pub fn encode(&self, prompt: &str, max_sequence_length: usize) -> Result<Conditioning> {
        let towers = Sd3Towers {
            clip_l: &self.clip_l,
            clip_g: &self.clip_g,
            t5: self.t5.as_ref(),
            joint_dim: self.joint_dim,
        };
        encode_prompt(
            &towers,
            prompt,
            max_sequence_length,
            PromptOptions::default(),
        )
    }
}

/// The three encoders of an SD3 model, borrowed.
pub(crate) struct Sd3Towers<'a> {
    pub clip_l: &'a TextTower,
    pub clip_g: &'a TextTower,
    pub t5: Option<&'a T5Tower>,
    /// The transformer's text width (T5's d_model).
    pub joint_dim: i64,
}

/// One prompt through SD3's encoders, as diffusers' `encode_prompt` (the
/// same prompt for all three; `options` reach the CLIP encoders: clip skip).
pub(crate) fn encode_prompt(
    towers: &Sd3Towers<'_>,
    prompt: &str,
    max_sequence_length: usize,
    options: PromptOptions,
) -> Result<Conditioning> {
    let mut one = encode_prompts(towers, &[prompt], max_sequence_length, options)?;
    one.pop()
        .ok_or_else(|| PipelineError::request(crate::front::Field::Prompt, "no prompt"))
}

/// Several prompts (a prompt and its negative), each as `encode_prompt`
/// encodes it; T5 runs them in one pass, so a streamed T5 reads its weights
/// once.
pub(crate) fn encode_prompts(
    towers: &Sd3Towers<'_>,
    prompts: &[&str],
    max_sequence_length: usize,
    options: PromptOptions,
) -> Result<Vec<Conditioning>> {
    let fail =
        |e: sd_t5::T5Error| PipelineError::request(crate::front::Field::Prompt, e.to_string());
    let t5_states = match towers.t5 {
        Some((tokenizer, model)) => {
            let ids = prompts
                .iter()
                .map(|p| {
                    let ids = tokenizer.encode(p, max_sequence_length).map_err(fail)?;
                    Ok(Tensor::from_slice(&ids.ids).unsqueeze(0))
                })
                .collect::<Result<Vec<_>>>()?;
            Some(model.forward_each(&ids).map_err(fail)?)
        }
        None => None,
    };
    let mut out = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let clip = |(tokenizer, model): &TextTower| {
            let layer = EmbeddingLayer::Penultimate;
            encode(tokenizer, model, prompt, layer, options, 1)
        };
        let (l, g) = (clip(towers.clip_l)?, clip(towers.clip_g)?);
        let clip_states = Tensor::cat(&[&l.hidden, &g.hidden], -1);
        let t5 = match &t5_states {
            Some(states) => states[i].shallow_clone(),
            None => Tensor::zeros(
                [1, max_sequence_length as i64, towers.joint_dim],
                (clip_states.kind(), clip_states.device()),
            ),
        };
        let pad = t5.size()[2] - clip_states.size()[2];
        let clip_states = clip_states.constant_pad_nd([0, pad]);
        out.push(Conditioning {
            hidden: Tensor::cat(&[clip_states, t5.to_device(l.hidden.device())], 1),
            pooled: Some(Tensor::cat(&[l.pooled, g.pooled], -1)),
        });
    }
    Ok(out)
}
