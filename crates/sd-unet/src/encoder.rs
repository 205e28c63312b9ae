//! The UNet's contracting half: time (and SDXL size/text) embedding,
//! `conv_in`, the down blocks and the mid block. The UNet runs it before its
//! up path; a ControlNet is a trained copy of exactly this half, under the
//! same weight names.

use sd_core::layers::ResnetConfig;
use sd_core::nn::Conv2d;
use tch::{nn::Path, Kind, Tensor};

use crate::config::{DownBlockType, UNetConfig};
use crate::cross::{CrossContext, ImageTokens, Numbering};
use crate::down::DownBlock;
use crate::embeddings::{timestep_features, TimestepEmbedding};
use crate::error::{Result, UNetError};
use crate::mid::MidBlock;
use crate::transformer::TransformerSettings;

/// SDXL's extra conditioning (`added_cond_kwargs` in diffusers).
#[derive(Debug)]
pub struct AddedConditions {
    /// The second text encoder's projected pooled embedding, (batch, dim).
    pub text_embeds: Tensor,
    /// Original size, crop top-left, target size: (batch, 6).
    pub time_ids: Tensor,
}

/// `conv_in`, `time_embedding`, `add_embedding`, `down_blocks.*` and
/// `mid_block` of a UNet config, built under one root.
#[derive(Debug)]
pub struct UNetEncoder {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<(TimestepEmbedding, i64)>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
}

/// What the encoder hands the up path (or a ControlNet's zero convolutions).
#[derive(Debug)]
pub struct Encoded {
    /// The mid block's output.
    pub mid: Tensor,
    /// `conv_in`'s output, then every down resnet's (and downsampler's), in order.
    pub skips: Vec<Tensor>,
    /// The time embedding the resnets were given.
    pub emb: Tensor,
}

impl UNetEncoder {
    /// The layers of `config` under `root` (diffusers' names), uninitialised.
    pub fn new(root: &Path<'_>, config: &UNetConfig) -> Result<Self> {
        let blocks = config.blocks()?;
        let boc = &config.block_out_channels;
        let n = boc.len();
        let temb = config.time_embed_dim();
        // 1. down path
        let mut down_blocks = Vec::new();
        let mut output = boc[0];
        for (i, (kind, b)) in config.down_block_types.iter().zip(&blocks).enumerate() {
            let input = output;
            output = b.out_channels;
            let attention = (*kind == DownBlockType::CrossAttnDownBlock2D)
                .then(|| TransformerSettings::of_block(config, b));
            down_blocks.push(DownBlock::new(
                &(root / "down_blocks" / i),
                input,
                &resnet_config(config, input, output, 1.0),
                b.layers,
                attention,
                i + 1 < n,
                config.downsample_padding,
            )?);
        }
        // 2. mid block at the last width (attn1 always self-attention there)
        let last = blocks[n - 1];
        let mid_settings = TransformerSettings {
            only_cross_attention: false,
            ..TransformerSettings::of_block(config, &last)
        };
        let mid_resnet = resnet_config(
            config,
            last.out_channels,
            last.out_channels,
            config.mid_block_scale_factor,
        );
        let mid_block = MidBlock::new(&(root / "mid_block"), &mid_resnet, &mid_settings)?;
        let add_embedding = match (
            config.addition_time_embed_dim,
            config.projection_class_embeddings_input_dim,
        ) {
            (Some(dim), Some(input)) if config.addition_embed_type.is_some() => Some((
                TimestepEmbedding::new(&(root / "add_embedding"), input, temb),
                dim,
            )),
            _ => None,
        };
        Ok(UNetEncoder {
            conv_in: Conv2d::new(&(root / "conv_in"), config.in_channels, boc[0], 3, 1, 1),
            time_embedding: TimestepEmbedding::new(&(root / "time_embedding"), boc[0], temb),
            add_embedding,
            down_blocks,
            mid_block,
            config: config.clone(),
        })
    }

    /// The config the layers were built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Checks `sample` is (batch, in_channels, h, w), not empty; returns the
    /// batch size.
    pub fn check_sample(&self, sample: &Tensor, what: &str) -> Result<i64> {
        let (batch, channels, h, w) = sample.size4().map_err(|_| {
            UNetError::invalid(
                what,
                format!(
                    "sample must be (batch, channels, h, w), got {:?}",
                    sample.size()
                ),
            )
        })?;
        if channels != self.config.in_channels {
            return Err(UNetError::invalid(
                what,
                format!(
                    "sample has {channels} channels, the model takes {}",
                    self.config.in_channels
                ),
            ));
        }
        // Any size: a stride-2 downsampler rounds up, and the up path
        // upsamples to each skip's size (diffusers' forward_upsample_size).
        if h < 1 || w < 1 {
            return Err(UNetError::invalid(
                what,
                format!("sample size {h}x{w} is empty"),
            ));
        }
        Ok(batch)
    }

    /// Runs the encoder on a checked `sample`. `hint` (a ControlNet's
    /// conditioning embedding) is added to `conv_in`'s output.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
        hint: Option<&Tensor>,
    ) -> Result<Encoded> {
        self.forward_with_images(sample, timestep, context, added, hint, None)
    }

    /// Numbers the down blocks' cross-attention layers (the first in
    /// diffusers' order).
    pub(crate) fn number_down(&mut self, numbering: &mut Numbering) {
        for (i, block) in self.down_blocks.iter_mut().enumerate() {
            block.number(&format!("down_blocks.{i}"), numbering);
        }
    }

    /// Numbers the mid block's (the last).
    pub(crate) fn number_mid(&mut self, numbering: &mut Numbering) {
        self.mid_block.number(numbering);
    }

    /// [`forward`](Self::forward) with image prompts' tokens for the
    /// cross-attention layers.
    pub fn forward_with_images(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
        hint: Option<&Tensor>,
        images: Option<&ImageTokens>,
    ) -> Result<Encoded> {
        let batch = sample.size()[0];
        let (kind, device) = (sample.kind(), sample.device());
        // 1. time embedding (+ SDXL's text/size embedding)
        let t = timestep
            .to_device(device)
            .reshape([-1])
            .expand([batch], false);
        let features = self.features(&t, self.config.block_out_channels[0]);
        let mut emb = self.time_embedding.forward(&features.to_kind(kind));
        match (&self.add_embedding, added) {
            (Some((embedding, dim)), Some(added)) => {
                let ids = added.time_ids.to_device(device).reshape([-1]);
                let time = self.features(&ids, *dim).reshape([batch, -1]);
                let text = added.text_embeds.to_device(device).to_kind(Kind::Float);
                emb += embedding.forward(&Tensor::cat(&[text, time], -1).to_kind(kind));
            }
            (Some(_), None) => {
                return Err(UNetError::invalid(
                    "unet input",
                    "this model (text_time) needs text_embeds and time_ids",
                ))
            }
            (None, _) => {}
        }
        // 2. down path, keeping every skip state
        let context = context.to_device(device).to_kind(kind);
        let mut x = if self.config.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample.shallow_clone()
        };
        x = self.conv_in.forward(&x);
        if let Some(hint) = hint {
            x += hint;
        }
        let mut skips = vec![x.shallow_clone()];
        let context = CrossContext {
            text: &context,
            images,
        };
        for block in &self.down_blocks {
            let (out, states) = block.forward(&x, &emb, &context);
            x = out;
            skips.extend(states);
        }
        // 3. mid block
        let mid = self.mid_block.forward(&x, &emb, &context);
        Ok(Encoded { mid, skips, emb })
    }

    fn features(&self, t: &Tensor, dim: i64) -> Tensor {
        timestep_features(
            t,
            dim,
            self.config.flip_sin_to_cos,
            self.config.freq_shift as f64,
        )
    }
}

/// A resnet of `config`'s UNet from `input` to `output` channels.
pub(crate) fn resnet_config(
    config: &UNetConfig,
    input: i64,
    output: i64,
    scale: f64,
) -> ResnetConfig {
    ResnetConfig {
        in_channels: input,
        out_channels: output,
        temb_channels: Some(config.time_embed_dim()),
        groups: config.norm_num_groups,
        groups_out: None,
        eps: config.norm_eps,
        output_scale_factor: scale,
    }
}
