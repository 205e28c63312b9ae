//! diffusers' `UNet2DConditionModel`: the noise predictor of SD1.x, SD2.x,
//! SDXL and their inpainting variants, with diffusers' weight names.

use std::path::Path;

use sd_core::layers::ResnetConfig;
use sd_core::nn::{Conv2d, GroupNorm};
use sd_core::DiffusersModel;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::{DownBlockType, UNetConfig, UpBlockType};
use crate::down::DownBlock;
use crate::embeddings::{timestep_features, TimestepEmbedding};
use crate::error::{Result, UNetError};
use crate::mid::MidBlock;
use crate::transformer::TransformerSettings;
use crate::up::{UpBlock, UpChannels};

/// SDXL's extra conditioning (`added_cond_kwargs` in diffusers).
#[derive(Debug)]
pub struct AddedConditions {
    /// The second text encoder's projected pooled embedding, (batch, dim).
    pub text_embeds: Tensor,
    /// Original size, crop top-left, target size: (batch, 6).
    pub time_ids: Tensor,
}

/// diffusers' `UNet2DConditionModel` (SD1.x, SD2.x, SDXL, inpainting),
/// under its diffusers key names.
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<(TimestepEmbedding, i64)>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    vs: VarStore,
}

impl std::fmt::Debug for UNet2DConditionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UNet2DConditionModel")
            .field("config", &self.config)
            .finish()
    }
}

impl UNet2DConditionModel {
    /// The architecture of `config`, uninitialised, on `device` (f32).
    pub fn new(config: &UNetConfig, device: Device) -> Result<Self> {
        Self::new_in(config, device, Kind::Float)
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Predicts the noise (or v, or x0) in `sample` (batch, in_channels, h, w)
    /// at `timestep` (0-d or (batch,), any numeric dtype) given the text
    /// `context` (batch, tokens, cross_attention_dim).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let (batch, channels, h, w) = sample.size4().map_err(|_| {
            UNetError::invalid(
                "unet input",
                format!(
                    "sample must be (batch, channels, h, w), got {:?}",
                    sample.size()
                ),
            )
        })?;
        if channels != self.config.in_channels {
            return Err(UNetError::invalid(
                "unet input",
                format!(
                    "sample has {channels} channels, the UNet takes {}",
                    self.config.in_channels
                ),
            ));
        }
        let factor = 1 << (self.config.block_out_channels.len() - 1);
        if h % factor != 0 || w % factor != 0 {
            return Err(UNetError::invalid(
                "unet input",
                format!("sample size {h}x{w} is not a multiple of {factor}"),
            ));
        }
        let kind = sample.kind();
        let device = sample.device();
        // 1. time embedding (+ SDXL's text/size embedding)
        let t = timestep
            .to_device(device)
            .reshape([-1])
            .expand([batch], false);
        let features = timestep_features(
            &t,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift as f64,
        );
        let mut emb = self.time_embedding.forward(&features.to_kind(kind));
        match (&self.add_embedding, added) {
            (Some((embedding, dim)), Some(added)) => {
                let ids = added.time_ids.to_device(device).reshape([-1]);
                let time = timestep_features(
                    &ids,
                    *dim,
                    self.config.flip_sin_to_cos,
                    self.config.freq_shift as f64,
                )
                .reshape([batch, -1]);
                let text = added.text_embeds.to_device(device).to_kind(Kind::Float);
                emb += embedding.forward(&Tensor::cat(&[text, time], -1).to_kind(kind));
            }
            (Some(_), None) => {
                return Err(UNetError::invalid(
                    "unet input",
                    "this UNet (text_time) needs text_embeds and time_ids",
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
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&x, &emb, &context);
            x = out;
            skips.extend(states);
        }
        // 3. mid block
        x = self.mid_block.forward(&x, &emb, &context);
        // 4. up path, consuming the skips newest first
        for block in &self.up_blocks {
            let taken = skips.split_off(skips.len() - block.resnet_count());
            let size = skips.last().map(|s| (s.size()[2], s.size()[3]));
            x = block.forward(&x, &taken, &emb, &context, size);
        }
        // 5. output
        Ok(self
            .conv_out
            .forward(&self.conv_norm_out.forward(&x).silu()))
    }
}

impl DiffusersModel for UNet2DConditionModel {
    type Config = UNetConfig;
    type Error = UNetError;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn read_config(path: &Path) -> Result<UNetConfig> {
        UNetConfig::from_file(path)
    }

    /// The same in `kind`: the parameters are created in that dtype (an f32
    /// build converted afterwards would first claim twice the GPU memory).
    fn new_in(config: &UNetConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let blocks = config.blocks()?;
        let boc = &config.block_out_channels;
        let n = boc.len();
        let temb = config.time_embed_dim();
        let groups = config.norm_num_groups;
        let resnet = |input: i64, output: i64, scale: f64| ResnetConfig {
            in_channels: input,
            out_channels: output,
            temb_channels: Some(temb),
            groups,
            groups_out: None,
            eps: config.norm_eps,
            output_scale_factor: scale,
        };
        let transformer = |b: &crate::config::BlockSettings| TransformerSettings {
            channels: b.out_channels,
            heads: b.heads,
            depth: b.transformer_depth,
            cross_attention_dim: b.cross_attention_dim,
            groups,
            use_linear_projection: config.use_linear_projection,
            only_cross_attention: b.only_cross_attention,
        };

        // 1. down path
        let mut down_blocks = Vec::new();
        let mut output = boc[0];
        for (i, (kind, b)) in config.down_block_types.iter().zip(&blocks).enumerate() {
            let input = output;
            output = b.out_channels;
            let attention = (*kind == DownBlockType::CrossAttnDownBlock2D).then(|| transformer(b));
            down_blocks.push(DownBlock::new(
                &(&root / "down_blocks" / i),
                input,
                &resnet(input, output, 1.0),
                b.layers,
                attention,
                i + 1 < n,
                config.downsample_padding,
            )?);
        }
        // 2. mid block at the last width
        let last = blocks[n - 1];
        let mid_settings = TransformerSettings {
            only_cross_attention: false,
            ..transformer(&last)
        };
        let mid_resnet = resnet(
            last.out_channels,
            last.out_channels,
            config.mid_block_scale_factor,
        );
        let mid_block = MidBlock::new(&(&root / "mid_block"), &mid_resnet, &mid_settings)?;
        // 3. up path, mirrored
        let mut up_blocks = Vec::new();
        let mut output = boc[n - 1];
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let b = blocks[n - 1 - i];
            let previous = output;
            output = b.out_channels;
            let input = boc[n - 1 - (i + 1).min(n - 1)];
            let attention = (*kind == UpBlockType::CrossAttnUpBlock2D).then(|| transformer(&b));
            up_blocks.push(UpBlock::new(
                &(&root / "up_blocks" / i),
                UpChannels { input, previous },
                &resnet(previous, output, 1.0),
                b.layers + 1,
                attention,
                i + 1 < n,
            )?);
        }
        let add_embedding = match (
            config.addition_time_embed_dim,
            config.projection_class_embeddings_input_dim,
        ) {
            (Some(dim), Some(input)) if config.addition_embed_type.is_some() => Some((
                TimestepEmbedding::new(&(&root / "add_embedding"), input, temb),
                dim,
            )),
            _ => None,
        };
        Ok(UNet2DConditionModel {
            conv_in: Conv2d::new(&(&root / "conv_in"), config.in_channels, boc[0], 3, 1, 1),
            time_embedding: TimestepEmbedding::new(&(&root / "time_embedding"), boc[0], temb),
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                &(&root / "conv_norm_out"),
                groups,
                boc[0],
                config.norm_eps,
            ),
            conv_out: Conv2d::new(&(&root / "conv_out"), boc[0], config.out_channels, 3, 1, 1),
            config: config.clone(),
            vs,
        })
    }

    fn config(&self) -> &UNetConfig {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }
}
