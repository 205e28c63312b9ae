//! diffusers' `ControlNetModel`: a trained copy of the UNet's encoder that
//! also sees a control image, and a zero-initialised 1x1 convolution per
//! skip state and for the mid block, whose outputs the UNet adds to its own.

use std::path::Path;

use sd_core::nn::Conv2d;
use sd_core::DiffusersModel;
use sd_unet::{AddedConditions, ControlResiduals, UNetEncoder};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::{ChannelOrder, ControlNetConfig};
use crate::embedding::ConditioningEmbedding;
use crate::error::{ControlNetError, Result};

/// diffusers' `ControlNetModel` (SD1.x, SD2.x, SDXL) under its diffusers names.
pub struct ControlNetModel {
    config: ControlNetConfig,
    encoder: UNetEncoder,
    conditioning: ConditioningEmbedding,
    down_convs: Vec<Conv2d>,
    mid_conv: Conv2d,
    vs: VarStore,
}

// SAFETY: forward reads the weights and allocates new tensors. Tensors reached through
// `var_store()` share storage with the weights; writing them in place while other
// threads run the model is a race libtorch's own handles allow, outside what this marker
// promises.
unsafe impl sd_core::shared::ReadOnlyShared for ControlNetModel {}

impl std::fmt::Debug for ControlNetModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlNetModel")
            .field("config", &self.config)
            .finish()
    }
}

/// How strongly, and how, one step's residuals are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlScale {
    /// diffusers' `conditioning_scale` (times the step's keep factor).
    pub scale: f64,
    /// Guess mode: residuals scaled from 0.1 (first skip) up to 1.0 (mid
    /// block) on a log scale, so the control speaks louder deeper down.
    pub guess_mode: bool,
}

impl ControlNetModel {
    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> Kind {
        self.vs.kind()
    }

    /// The residuals for the UNet at `timestep`, from the noisy `sample`,
    /// the text `context`, SDXL's `added` conditions and the control
    /// `image` (batch, channels, H, W) in [0, 1] at the output size.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
        image: &Tensor,
        scale: ControlScale,
    ) -> Result<ControlResiduals> {
        let batch = self.encoder.check_sample(sample, "controlnet input")?;
        let image_shape = image.size();
        let (h, w) = (sample.size()[2], sample.size()[3]);
        let factor = 1
            << (self
                .config
                .control
                .conditioning_embedding_out_channels
                .len()
                - 1);
        if image_shape.len() != 4
            || image_shape[0] != batch
            || image_shape[1] != self.config.control.conditioning_channels
            || image_shape[2] != h * factor
            || image_shape[3] != w * factor
        {
            return Err(ControlNetError::invalid(
                "control image",
                format!(
                    "{image_shape:?} does not fit latents {:?}: the ControlNet wants \
                     ({batch}, {}, {}, {})",
                    sample.size(),
                    self.config.control.conditioning_channels,
                    h * factor,
                    w * factor
                ),
            ));
        }
        // 1. the control image, in the channel order the model was trained on
        let image = match self.config.control.controlnet_conditioning_channel_order {
            ChannelOrder::Rgb => image.shallow_clone(),
            ChannelOrder::Bgr => image.flip([1]),
        };
        let image = image.to_device(sample.device()).to_kind(sample.kind());
        let hint = self.conditioning.forward(&image);
        // 2. the UNet encoder copy, the hint added after conv_in
        let encoded = self
            .encoder
            .forward(sample, timestep, context, added, Some(&hint))?;
        // 3. zero convolutions
        let mut down: Vec<Tensor> = encoded
            .skips
            .iter()
            .zip(&self.down_convs)
            .map(|(s, conv)| conv.forward(s))
            .collect();
        let mut mid = self.mid_conv.forward(&encoded.mid);
        // 4. scaling: guess mode's log ramp (computed as diffusers does, in
        //    f32 on the device) or one scale for all
        let global_pool = self.config.control.global_pool_conditions;
        if scale.guess_mode && !global_pool {
            let n = down.len() as i64;
            let ramp =
                Tensor::logspace(-1, 0, n + 1, 10.0, (Kind::Float, sample.device())) * scale.scale;
            down = down
                .iter()
                .enumerate()
                .map(|(i, d)| d * ramp.get(i as i64))
                .collect();
            mid *= ramp.get(n);
        } else {
            down = down.iter().map(|d| d * scale.scale).collect();
            mid *= scale.scale;
        }
        if global_pool {
            down = down
                .iter()
                .map(|d| d.mean_dim([2i64, 3].as_slice(), true, None))
                .collect();
            mid = mid.mean_dim([2i64, 3].as_slice(), true, None);
        }
        Ok(ControlResiduals { down, mid })
    }

    /// Whether every step should run in guess mode (`global_pool_conditions`).
    pub fn forces_guess_mode(&self) -> bool {
        self.config.control.global_pool_conditions
    }
}

impl DiffusersModel for ControlNetModel {
    type Config = ControlNetConfig;
    type Error = ControlNetError;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn read_config(path: &Path) -> Result<ControlNetConfig> {
        ControlNetConfig::from_file(path)
    }

    fn new_in(config: &ControlNetConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let unet = &config.unet;
        let boc = &unet.block_out_channels;
        let encoder = UNetEncoder::new(&root, unet)?;
        let conditioning = ConditioningEmbedding::new(
            &(&root / "controlnet_cond_embedding"),
            config.control.conditioning_channels,
            &config.control.conditioning_embedding_out_channels,
            boc[0],
        );
        // One zero convolution per skip state: conv_in's, each resnet's,
        // each downsampler's.
        let mut widths = vec![boc[0]];
        for (i, b) in unet.blocks()?.iter().enumerate() {
            widths.extend(std::iter::repeat_n(b.out_channels, b.layers as usize));
            if i + 1 < boc.len() {
                widths.push(b.out_channels);
            }
        }
        let down_convs = widths
            .iter()
            .enumerate()
            .map(|(i, &c)| Conv2d::new(&(&root / "controlnet_down_blocks" / i), c, c, 1, 1, 0))
            .collect();
        let last = boc[boc.len() - 1];
        let mid_conv = Conv2d::new(&(&root / "controlnet_mid_block"), last, last, 1, 1, 0);
        Ok(ControlNetModel {
            config: config.clone(),
            encoder,
            conditioning,
            down_convs,
            mid_conv,
            vs,
        })
    }

    fn config(&self) -> &ControlNetConfig {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }
}
