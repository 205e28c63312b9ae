//! Stage 1, conditioning: the prompts through the text encoder(s), as
//! diffusers' `encode_prompt`, batched for one CFG pass, and SDXL's added
//! conditions or SD3's pooled text.

use sd_clip::{encode, EmbeddingLayer};
use sd_core::DiffusersModel;
use sd_unet::AddedConditions;
use tch::Tensor;

use crate::denoiser::Extra;
use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::generate::checks::RunShape;
use crate::generate::request::{Conditioning, PromptEmbeddings, Request};
use crate::model::ModelFamily;
use crate::pipeline::StableDiffusion;

impl StableDiffusion {
    /// The denoiser's text context, [negative, positive] when guided, and
    /// SDXL's added conditions or SD3's pooled text, for the whole batch
    /// on the denoiser's device.
    pub(crate) fn batch_conditioning(
        &self,
        request: &Request,
        shape: &RunShape,
    ) -> Result<(Tensor, Extra)> {
        let (n, cfg) = (shape.n, shape.cfg);
        let device = self.devices().unet;
        let dtype = self.denoiser.dtype();
        let embeddings = match &request.embeddings {
            Some(e) => e.clone(),
            None => self.encode_prompts(request, cfg)?,
        };
        let repeat = |c: &Tensor| per_image(c, n).to_device(device).to_kind(dtype);
        let context = if cfg {
            Tensor::cat(
                &[
                    repeat(&embeddings.negative.hidden),
                    repeat(&embeddings.positive.hidden),
                ],
                0,
            )
        } else {
            repeat(&embeddings.positive.hidden)
        };
        let extra = match self.family() {
            ModelFamily::StableDiffusionXl => Extra::Added(self.added_conditions(
                request,
                &embeddings,
                cfg,
                n,
                (shape.width, shape.height),
            )?),
            ModelFamily::StableDiffusion3 | ModelFamily::Flux => {
                let pooled = |c: &Conditioning| -> Result<Tensor> {
                    let p = c.pooled.as_ref().ok_or_else(|| {
                        PipelineError::request(
                            Field::Embeddings,
                            "the model needs pooled embeddings",
                        )
                    })?;
                    Ok(repeat(p))
                };
                Extra::Pooled(match cfg {
                    true => Tensor::cat(
                        &[pooled(&embeddings.negative)?, pooled(&embeddings.positive)?],
                        0,
                    ),
                    false => pooled(&embeddings.positive)?,
                })
            }
            _ => Extra::None,
        };
        Ok((context, extra))
    }

    /// SD3's prompts, as diffusers' `StableDiffusion3Pipeline.encode_prompt`:
    /// a missing negative prompt is "" (encoded, not zeros).
    fn encode_prompts_sd3(&self, request: &Request, cfg: bool) -> Result<PromptEmbeddings> {
        let clip_g = self
            .text_2
            .as_ref()
            .ok_or_else(|| PipelineError::model(&self.dir, "SD3 needs text_encoder_2 (CLIP-G)"))?;
        let joint_dim = match self.transformer() {
            Some(t) => t.config().joint_attention_dim,
            None => return Err(PipelineError::model(&self.dir, "SD3 needs its transformer")),
        };
        let towers = crate::sd3::Sd3Towers {
            clip_l: &self.text,
            clip_g,
            t5: self.t5.as_ref(),
            joint_dim,
        };
        let (tokens, options) = (self.max_sequence_length(request), request.prompt_options);
        let negative = request.negative_prompt.as_deref().unwrap_or("");
        // diffusers encodes no negative without guidance; the loop never reads it
        let prompts: Vec<&str> = match cfg {
            true => vec![&request.prompt, negative],
            false => vec![&request.prompt],
        };
        let mut encoded = crate::sd3::encode_prompts(&towers, &prompts, tokens, options)?;
        let negative = match cfg {
            true => encoded.pop(),
            false => None,
        };
        let positive = encoded
            .pop()
            .ok_or_else(|| PipelineError::request(Field::Prompt, "no prompt encoded"))?;
        let negative = negative.unwrap_or_else(|| positive.clone());
        Ok(PromptEmbeddings { positive, negative })
    }

    /// FLUX's prompts, as diffusers' `FluxPipeline.encode_prompt`: CLIP-L's
    /// pooled output (77 tokens) and T5's states (`max_sequence_length`
    /// tokens, padded). The negative is encoded only for true CFG (`cfg`).
    fn encode_prompts_flux(&self, request: &Request, cfg: bool) -> Result<PromptEmbeddings> {
        let (tokenizer, t5) = self
            .t5
            .as_ref()
            .ok_or_else(|| PipelineError::model(&self.dir, "FLUX needs its T5 (text_encoder_2)"))?;
        let fail = |e: sd_t5::T5Error| PipelineError::request(Field::Prompt, e.to_string());
        let one = |prompt: &str| -> Result<Conditioning> {
            let ids = tokenizer
                .encode(prompt, self.max_sequence_length(request))
                .map_err(fail)?;
            let ids = Tensor::from_slice(&ids.ids).unsqueeze(0);
            let states = t5.forward_each(&[ids]).map_err(fail)?.remove(0);
            let (clip_tokenizer, clip) = (&self.text.0, &self.text.1);
            let options = request.prompt_options;
            let clip = encode(
                clip_tokenizer,
                clip,
                prompt,
                EmbeddingLayer::Final,
                options,
                1,
            )?;
            Ok(Conditioning {
                hidden: states.to_device(clip.hidden.device()),
                pooled: Some(clip.pooled),
            })
        };
        let positive = one(&request.prompt)?;
        let negative = match (cfg, &request.negative_prompt) {
            (true, Some(negative)) => one(negative)?,
            _ => positive.clone(),
        };
        Ok(PromptEmbeddings { positive, negative })
    }

    /// The prompts through the text encoder(s), as diffusers' `encode_prompt`.
    pub fn encode_prompts(&self, request: &Request, cfg: bool) -> Result<PromptEmbeddings> {
        match self.family() {
            ModelFamily::StableDiffusion3 => return self.encode_prompts_sd3(request, cfg),
            ModelFamily::Flux => return self.encode_prompts_flux(request, cfg),
            _ => {}
        }
        let options = request.prompt_options;
        let negative_text = request.negative_prompt.clone().unwrap_or_default();
        let (tokenizer, text_encoder) = (&self.text.0, &self.text.1);
        match &self.text_2 {
            None => {
                let layer = EmbeddingLayer::Final;
                let positive = encode(tokenizer, text_encoder, &request.prompt, layer, options, 1)?;
                let negative = if cfg {
                    encode(
                        tokenizer,
                        text_encoder,
                        &negative_text,
                        layer,
                        options,
                        positive.windows,
                    )?
                    .hidden
                } else {
                    positive.hidden.zeros_like()
                };
                Ok(PromptEmbeddings {
                    positive: Conditioning {
                        hidden: positive.hidden,
                        pooled: None,
                    },
                    negative: Conditioning {
                        hidden: negative,
                        pooled: None,
                    },
                })
            }
            Some((tokenizer_2, encoder_2)) => {
                let layer = EmbeddingLayer::Penultimate;
                let pair = |text: &str, windows: usize| -> Result<(Tensor, Tensor, usize)> {
                    let a = encode(tokenizer, text_encoder, text, layer, options, windows)?;
                    let b = encode(
                        tokenizer_2,
                        encoder_2,
                        text,
                        layer,
                        options,
                        windows.max(a.windows),
                    )?;
                    Ok((
                        Tensor::cat(&[a.hidden, b.hidden.to_device(a.pooled.device())], -1),
                        b.pooled,
                        a.windows,
                    ))
                };
                let (hidden, pooled, windows) = pair(&request.prompt, 1)?;
                let zero_negative =
                    request.negative_prompt.is_none() && self.index.force_zeros_for_empty_prompt;
                let (neg_hidden, neg_pooled) = if !cfg || zero_negative {
                    (hidden.zeros_like(), pooled.zeros_like())
                } else {
                    let (h, p, _) = pair(&negative_text, windows)?;
                    (h, p)
                };
                Ok(PromptEmbeddings {
                    positive: Conditioning {
                        hidden,
                        pooled: Some(pooled),
                    },
                    negative: Conditioning {
                        hidden: neg_hidden,
                        pooled: Some(neg_pooled),
                    },
                })
            }
        }
    }

    /// SDXL's pooled text and (original size, crop, target size) ids.
    fn added_conditions(
        &self,
        request: &Request,
        embeddings: &PromptEmbeddings,
        cfg: bool,
        n: usize,
        (width, height): (u32, u32),
    ) -> Result<AddedConditions> {
        let device = self.devices().unet;
        let (oh, ow) = request.sdxl_original_size.unwrap_or((height, width));
        let (ct, cl) = request.sdxl_crop_top_left;
        let (th, tw) = request.sdxl_target_size.unwrap_or((height, width));
        let ids: Vec<f32> = [oh, ow, ct, cl, th, tw].iter().map(|&v| v as f32).collect();
        let ids = Tensor::from_slice(&ids).unsqueeze(0).repeat([n as i64, 1]);
        let pooled = |c: &Conditioning| -> Result<Tensor> {
            let p = c.pooled.as_ref().ok_or_else(|| {
                PipelineError::request(Field::Embeddings, "SDXL needs pooled embeddings")
            })?;
            Ok(per_image(p, n).to_device(device))
        };
        let (text_embeds, time_ids) = if cfg {
            (
                Tensor::cat(
                    &[pooled(&embeddings.negative)?, pooled(&embeddings.positive)?],
                    0,
                ),
                Tensor::cat(&[&ids, &ids], 0),
            )
        } else {
            (pooled(&embeddings.positive)?, ids)
        };
        Ok(AddedConditions {
            text_embeds,
            time_ids: time_ids.to_device(device),
        })
    }
}

/// Embeddings for `n` images: one prompt's (batch 1) repeated, or already
/// one per image (batch `n`, as a server batching several requests makes;
/// [`StableDiffusion::check`] refuses any other batch).
fn per_image(c: &Tensor, n: usize) -> Tensor {
    if c.size()[0] == n as i64 {
        return c.shallow_clone();
    }
    let mut repeats = vec![1i64; c.dim()];
    repeats[0] = n as i64;
    c.repeat(repeats)
}
