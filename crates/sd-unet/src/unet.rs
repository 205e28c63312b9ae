//! diffusers' `UNet2DConditionModel`: the noise predictor of SD1.x, SD2.x,
//! SDXL and their inpainting variants, with diffusers' weight names.

use std::path::Path;

use sd_core::nn::{Conv2d, GroupNorm};
use sd_core::DiffusersModel;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::{UNetConfig, UpBlockType};
use crate::cross::{CrossAttentionLayer, CrossContext, ImageTokens, Numbering};
use crate::encoder::{resnet_config, AddedConditions, UNetEncoder};
use crate::error::{Result, UNetError};
use crate::transformer::TransformerSettings;
use crate::up::{UpBlock, UpChannels};

/// Residuals a ControlNet adds to the UNet (diffusers'
/// `down_block_additional_residuals` and `mid_block_additional_residual`).
#[derive(Debug)]
pub struct ControlResiduals {
    /// One per skip state, in the down path's order.
    pub down: Vec<Tensor>,
    /// Added to the mid block's output.
    pub mid: Tensor,
}

impl ControlResiduals {
    /// Several ControlNets' residuals summed, `self` first (diffusers'
    /// `MultiControlNetModel` order: the float sums depend on it).
    pub fn plus(self, other: &ControlResiduals) -> ControlResiduals {
        ControlResiduals {
            down: self
                .down
                .iter()
                .zip(&other.down)
                .map(|(a, b)| a + b)
                .collect(),
            mid: self.mid + &other.mid,
        }
    }
}

/// diffusers' `UNet2DConditionModel` (SD1.x, SD2.x, SDXL, inpainting),
/// under its diffusers key names.
pub struct UNet2DConditionModel {
    encoder: UNetEncoder,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    cross_layers: Vec<CrossAttentionLayer>,
    vs: VarStore,
}

// SAFETY: its `&self` methods (forward, the encoder half, config) read the weights and
// allocate new tensors. Tensors reached through `var_store()` share storage with the
// weights; writing them in place while other threads run the model is a race libtorch's
// own handles allow, outside what this marker promises.
unsafe impl sd_core::shared::ReadOnlyShared for UNet2DConditionModel {}

impl std::fmt::Debug for UNet2DConditionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UNet2DConditionModel")
            .field("config", self.encoder.config())
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
        self.forward_controlled(sample, timestep, context, added, None)
    }

    /// [`forward`](Self::forward) with a ControlNet's residuals added to the
    /// skip states and to the mid block's output.
    pub fn forward_controlled(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        let conditions = Conditions {
            added,
            control,
            images: None,
        };
        self.forward_with(sample, timestep, context, &conditions)
    }

    /// The cross-attention layers in diffusers' order of its attention
    /// processors (down blocks, up blocks, mid block): the order
    /// IP-Adapter files number their `ip_adapter.N` weights in, and
    /// [`ImageTokens`] is indexed by.
    pub fn cross_attention_layers(&self) -> &[CrossAttentionLayer] {
        &self.cross_layers
    }

    /// [`forward`](Self::forward) with every conditioning besides the text.
    pub fn forward_with(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        conditions: &Conditions<'_>,
    ) -> Result<Tensor> {
        let Conditions {
            added,
            control,
            images,
        } = *conditions;
        self.encoder.check_sample(sample, "unet input")?;
        if let Some(images) = images {
            self.check_images(images)?;
        }
        // 1-3. time embedding, down path, mid block
        let encoded =
            (self.encoder).forward_with_images(sample, timestep, context, added, None, images)?;
        let (mut x, mut skips, emb) = (encoded.mid, encoded.skips, encoded.emb);
        if let Some(control) = control {
            if control.down.len() != skips.len() {
                return Err(UNetError::invalid(
                    "control residuals",
                    format!(
                        "{} down residuals for {} skip states",
                        control.down.len(),
                        skips.len()
                    ),
                ));
            }
            skips = skips
                .iter()
                .zip(&control.down)
                .map(|(s, r)| s + r)
                .collect();
            x += &control.mid;
        }
        // 4. up path, consuming the skips newest first
        let context = context.to_device(x.device()).to_kind(x.kind());
        let context = CrossContext {
            text: &context,
            images,
        };
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

impl UNet2DConditionModel {
    fn check_images(&self, images: &ImageTokens) -> Result<()> {
        if images.layers.len() != self.cross_layers.len() {
            let message = format!(
                "image tokens for {} cross-attention layers, the model has {}",
                images.layers.len(),
                self.cross_layers.len()
            );
            return Err(UNetError::invalid("unet input", message));
        }
        Ok(())
    }
}

/// What a UNet evaluation takes besides the sample, timestep and text.
#[derive(Debug, Default, Clone, Copy)]
#[non_exhaustive]
pub struct Conditions<'a> {
    /// SDXL's added conditions.
    pub added: Option<&'a AddedConditions>,
    /// A ControlNet's residuals.
    pub control: Option<&'a ControlResiduals>,
    /// IP-Adapters' image tokens.
    pub images: Option<&'a ImageTokens>,
}

impl<'a> Conditions<'a> {
    /// These conditions.
    pub fn new(
        added: Option<&'a AddedConditions>,
        control: Option<&'a ControlResiduals>,
        images: Option<&'a ImageTokens>,
    ) -> Self {
        Conditions {
            added,
            control,
            images,
        }
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
        // 1-2. time embedding, down path and mid block
        let encoder = UNetEncoder::new(&root, config)?;
        let blocks = config.blocks()?;
        let boc = &config.block_out_channels;
        let n = boc.len();
        // 3. up path, mirrored
        let mut up_blocks = Vec::new();
        let mut output = boc[n - 1];
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let b = blocks[n - 1 - i];
            let previous = output;
            output = b.out_channels;
            let input = boc[n - 1 - (i + 1).min(n - 1)];
            let attention = (*kind == UpBlockType::CrossAttnUpBlock2D)
                .then(|| TransformerSettings::of_block(config, &b));
            up_blocks.push(UpBlock::new(
                &(&root / "up_blocks" / i),
                UpChannels { input, previous },
                &resnet_config(config, previous, output, 1.0),
                b.layers + 1,
                attention,
                i + 1 < n,
            )?);
        }
        // diffusers' order of attention processors: down, up, then mid
        let mut encoder = encoder;
        let mut numbering = Numbering::default();
        encoder.number_down(&mut numbering);
        for (i, block) in up_blocks.iter_mut().enumerate() {
            block.number(&format!("up_blocks.{i}"), &mut numbering);
        }
        encoder.number_mid(&mut numbering);
        let groups = config.norm_num_groups;
        Ok(UNet2DConditionModel {
            cross_layers: numbering.layers,
            encoder,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                &(&root / "conv_norm_out"),
                groups,
                boc[0],
                config.norm_eps,
            ),
            conv_out: Conv2d::new(&(&root / "conv_out"), boc[0], config.out_channels, 3, 1, 1),
            vs,
        })
    }

    fn config(&self) -> &UNetConfig {
        self.encoder.config()
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }
}
