//! diffusers' `SD3Transformer2DModel`: patch embedding with a position
//! table cropped to the latents' grid, timestep + pooled-text embedding,
//! the joint blocks, the output norm and the un-patching.

use std::path::Path;

use sd_core::layers::{timestep_features, TimestepEmbedding};
use sd_core::nn::{param, Conv2d, Linear};
use sd_core::DiffusersModel;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::blocks::JointBlock;
use crate::config::MmditConfig;
use crate::error::{MmditError, Result};
use sd_core::layers::dit::ContinuousNorm;

/// The multimodal diffusion transformer of SD3 / SD3.5 (`transformer/`).
pub struct SD3Transformer2DModel {
    config: MmditConfig,
    patch: Conv2d,
    pos_embed: Tensor,
    timestep_embedder: TimestepEmbedding,
    text_embedder: TimestepEmbedding,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    norm_out: ContinuousNorm,
    proj_out: Linear,
    vs: VarStore,
}

// SAFETY: its `&self` methods (forward, config) read the weights and allocate new
// tensors. Tensors reached through `var_store()` share storage with the weights;
// writing them in place while other threads run the model is a race libtorch's own
// handles allow, outside what this marker promises.
unsafe impl sd_core::shared::ReadOnlyShared for SD3Transformer2DModel {}

impl std::fmt::Debug for SD3Transformer2DModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SD3Transformer2DModel")
            .field("config", &self.config)
            .finish()
    }
}

impl SD3Transformer2DModel {
    /// The velocity for `latents` (batch, channels, h, w) at `timestep`
    /// (batch,) (the sigma times 1000), given the text states `context`
    /// (batch, tokens, joint_attention_dim) and the pooled CLIP embedding
    /// `pooled` (batch, pooled_projection_dim). Blocks in `skip_layers`
    /// are left out (skip-layer guidance).
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        skip_layers: &[usize],
    ) -> Result<Tensor> {
        let (b, _, h, w) = self.check(latents)?;
        let p = self.config.patch_size;
        let dtype = self.vs.kind();
        // 1. patches plus the cropped position table
        let x = self.patch.forward(latents).flatten(2, -1).transpose(1, 2);
        let kind = x.kind();
        // (no `.contiguous()`: with one image the sum keeps the patches'
        // transposed layout, which diffusers' first linear reads as such, and
        // a GEMM rounds by layout)
        let x = (x + self.cropped_pos_embed(h / p, w / p)).to_kind(kind);
        // 2. timestep and pooled text, summed
        let features = timestep_features(&timestep.to_device(self.vs.device()), 256, true, 0.0);
        let temb = self
            .timestep_embedder
            .forward(&features.to_kind(pooled.kind()))
            + self.text_embedder.forward(pooled);
        let mut context = self.context_embedder.forward(context);
        let mut x = x;
        for (i, block) in self.blocks.iter().enumerate() {
            if skip_layers.contains(&i) {
                continue;
            }
            let (next_context, next_x) = block.forward(&x, &context, &temb);
            x = next_x;
            if let Some(next_context) = next_context {
                context = next_context;
            }
        }
        // 3. output norm, projection, patches back to a latent image
        let x = self.proj_out.forward(&self.norm_out.forward(&x, &temb));
        let c = self.config.out_channels;
        let x = x
            .reshape([b, h / p, w / p, p, p, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, c, h, w]);
        debug_assert_eq!(x.kind(), dtype);
        Ok(x)
    }

    fn check(&self, latents: &Tensor) -> Result<(i64, i64, i64, i64)> {
        let c = &self.config;
        let (b, ch, h, w) = latents.size4().map_err(|_| {
            MmditError::Input(format!(
                "latents must be (batch, channels, h, w), got {:?}",
                latents.size()
            ))
        })?;
        if ch != c.in_channels {
            return Err(MmditError::Input(format!(
                "{ch} latent channels; the model takes {}",
                c.in_channels
            )));
        }
        let max = c.pos_embed_max_size * c.patch_size;
        for (side, v) in [("height", h), ("width", w)] {
            if v % c.patch_size != 0 || v > max {
                return Err(MmditError::Input(format!(
                    "latent {side} {v}: a multiple of {} up to {max} (images: multiples of 16)",
                    c.patch_size
                )));
            }
        }
        Ok((b, ch, h, w))
    }

    /// The centre `rows` x `cols` of the position table, as (1, tokens, dim).
    fn cropped_pos_embed(&self, rows: i64, cols: i64) -> Tensor {
        let m = self.config.pos_embed_max_size;
        let (top, left) = ((m - rows) / 2, (m - cols) / 2);
        self.pos_embed
            .reshape([1, m, m, -1])
            .narrow(1, top, rows)
            .narrow(2, left, cols)
            .reshape([1, rows * cols, -1])
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

impl DiffusersModel for SD3Transformer2DModel {
    type Config = MmditConfig;
    type Error = MmditError;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn read_config(path: &Path) -> Result<MmditConfig> {
        MmditConfig::from_file(path)
    }

    fn new_in(config: &MmditConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let dim = config.inner_dim();
        let (p, m) = (config.patch_size, config.pos_embed_max_size);
        let embed = &root / "pos_embed";
        let time_text = &root / "time_text_embed";
        let blocks = (0..config.num_layers)
            .map(|i| JointBlock::new(&(&root / "transformer_blocks" / i), config, i))
            .collect();
        Ok(SD3Transformer2DModel {
            patch: Conv2d::new(&(&embed / "proj"), config.in_channels, dim, p, p, 0),
            pos_embed: param(&embed, "pos_embed", &[1, m * m, dim]),
            timestep_embedder: TimestepEmbedding::new(
                &(&time_text / "timestep_embedder"),
                256,
                dim,
            ),
            text_embedder: TimestepEmbedding::new(
                &(&time_text / "text_embedder"),
                config.pooled_projection_dim,
                dim,
            ),
            context_embedder: Linear::new(
                &(&root / "context_embedder"),
                config.joint_attention_dim,
                dim,
                true,
            ),
            blocks,
            norm_out: ContinuousNorm::new(&(&root / "norm_out"), dim),
            proj_out: Linear::new(
                &(&root / "proj_out"),
                dim,
                p * p * config.out_channels,
                true,
            ),
            config: config.clone(),
            vs,
        })
    }

    fn config(&self) -> &MmditConfig {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }
}
