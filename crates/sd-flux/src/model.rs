//! diffusers' `FluxTransformer2DModel`: packed latent tokens and T5 states
//! embedded, the timestep (and FLUX.1-dev's distilled guidance) and pooled
//! CLIP-L summed into one conditioning vector, rotary positions over
//! (text, image) ids, double- then single-stream blocks, the output norm.

use std::path::Path;

use sd_core::layers::dit::ContinuousNorm;
use sd_core::layers::{timestep_features, TimestepEmbedding};
use sd_core::nn::Linear;
use sd_core::DiffusersModel;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::blocks::{DoubleBlock, SingleBlock};
use crate::config::FluxConfig;
use crate::error::{FluxError, Result};

/// The rotary embedding's base.
const THETA: f64 = 10000.0;

/// FLUX.1's transformer (`transformer/`).
pub struct FluxTransformer2DModel {
    config: FluxConfig,
    x_embedder: Linear,
    context_embedder: Linear,
    timestep_embedder: TimestepEmbedding,
    guidance_embedder: Option<TimestepEmbedding>,
    text_embedder: TimestepEmbedding,
    double: Vec<DoubleBlock>,
    single: Vec<SingleBlock>,
    norm_out: ContinuousNorm,
    proj_out: Linear,
    vs: VarStore,
}

// SAFETY: its `&self` methods (forward, config) read the weights and allocate new
// tensors. Tensors reached through `var_store()` share storage with the weights;
// writing them in place while other threads run the model is a race libtorch's own
// handles allow, outside what this marker promises.
unsafe impl sd_core::shared::ReadOnlyShared for FluxTransformer2DModel {}

impl std::fmt::Debug for FluxTransformer2DModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluxTransformer2DModel")
            .field("config", &self.config)
            .finish()
    }
}

/// One call's inputs, as diffusers' `forward` names them.
#[derive(Debug)]
#[non_exhaustive]
pub struct FluxInputs<'a> {
    /// Packed latent tokens (batch, image tokens, in_channels).
    pub hidden_states: &'a Tensor,
    /// T5 states (batch, text tokens, joint_attention_dim).
    pub encoder_hidden_states: &'a Tensor,
    /// Pooled CLIP-L (batch, pooled_projection_dim).
    pub pooled_projections: &'a Tensor,
    /// The sigma (batch,), in [0, 1] (the model scales it by 1000).
    pub timestep: &'a Tensor,
    /// Image token positions (image tokens, 3).
    pub img_ids: &'a Tensor,
    /// Text token positions (text tokens, 3).
    pub txt_ids: &'a Tensor,
    /// FLUX.1-dev's distilled guidance scale (batch,); `None` for FLUX.1-schnell.
    pub guidance: Option<&'a Tensor>,
}

impl<'a> FluxInputs<'a> {
    /// The inputs without guidance (set `guidance` for FLUX.1-dev models).
    pub fn new(
        hidden_states: &'a Tensor,
        encoder_hidden_states: &'a Tensor,
        pooled_projections: &'a Tensor,
        timestep: &'a Tensor,
        (img_ids, txt_ids): (&'a Tensor, &'a Tensor),
    ) -> Self {
        FluxInputs {
            hidden_states,
            encoder_hidden_states,
            pooled_projections,
            timestep,
            img_ids,
            txt_ids,
            guidance: None,
        }
    }
}

impl FluxTransformer2DModel {
    /// The velocity for the packed latent tokens (batch, image tokens,
    /// out_channels).
    pub fn forward(&self, inputs: &FluxInputs<'_>) -> Result<Tensor> {
        self.check(inputs)?;
        let device = self.vs.device();
        let x = self.x_embedder.forward(inputs.hidden_states);
        let kind = x.kind();
        let temb = self.conditioning(inputs, kind)?;
        let mut context = self.context_embedder.forward(inputs.encoder_hidden_states);
        let ids = Tensor::cat(&[inputs.txt_ids, inputs.img_ids], 0).to_device(device);
        let (cos, sin) = crate::rope::tables(&ids, &self.config.axes_dims_rope, THETA);
        let rope = (&cos, &sin);
        let mut x = x;
        for block in &self.double {
            (context, x) = block.forward(&x, &context, &temb, rope);
        }
        let t = context.size()[1];
        let mut tokens = Tensor::cat(&[context, x], 1);
        for block in &self.single {
            tokens = block.forward(&tokens, &temb, rope);
        }
        let x = tokens.narrow(1, t, tokens.size()[1] - t);
        Ok(self.proj_out.forward(&self.norm_out.forward(&x, &temb)))
    }

    /// Timestep (+ guidance) + pooled text, as diffusers'
    /// `CombinedTimestep(Guidance)TextProjEmbeddings`: each scaled by 1000
    /// in the model's dtype, its sinusoidal features cast to the pooled
    /// text's dtype.
    fn conditioning(&self, inputs: &FluxInputs<'_>, kind: Kind) -> Result<Tensor> {
        let device = self.vs.device();
        let pooled = inputs.pooled_projections;
        let embed = |t: &Tensor, embedder: &TimestepEmbedding| {
            let scaled = t.to_device(device).to_kind(kind) * 1000.0;
            embedder.forward(&timestep_features(&scaled, 256, true, 0.0).to_kind(pooled.kind()))
        };
        let mut temb = embed(inputs.timestep, &self.timestep_embedder);
        match (&self.guidance_embedder, inputs.guidance) {
            (Some(embedder), Some(guidance)) => temb += embed(guidance, embedder),
            (Some(_), None) => {
                return Err(FluxError::Input(
                    "this model takes distilled guidance ([dev]): give a guidance scale".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(FluxError::Input(
                    "this model has no guidance embedding ([schnell]): leave guidance out".into(),
                ))
            }
            (None, None) => {}
        }
        Ok(temb + self.text_embedder.forward(pooled))
    }

    fn check(&self, inputs: &FluxInputs<'_>) -> Result<()> {
        let c = &self.config;
        let shape = |t: &Tensor| t.size();
        let x = shape(inputs.hidden_states);
        let ctx = shape(inputs.encoder_hidden_states);
        let bad = |what: &str, got: Vec<i64>, want: String| {
            Err(FluxError::Input(format!("{what} {got:?}: expected {want}")))
        };
        if x.len() != 3 || x[2] != c.in_channels {
            return bad(
                "hidden_states",
                x,
                format!("(batch, tokens, {})", c.in_channels),
            );
        }
        if ctx.len() != 3 || ctx[2] != c.joint_attention_dim || ctx[0] != x[0] {
            let want = format!("({}, tokens, {})", x[0], c.joint_attention_dim);
            return bad("encoder_hidden_states", ctx, want);
        }
        let ids = |t: &Tensor, n: i64| t.size() == [n, 3];
        if !ids(inputs.img_ids, x[1]) || !ids(inputs.txt_ids, ctx[1]) {
            let got = [shape(inputs.img_ids), shape(inputs.txt_ids)].concat();
            return bad(
                "img_ids, txt_ids",
                got,
                format!("({}, 3), ({}, 3)", x[1], ctx[1]),
            );
        }
        Ok(())
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

impl DiffusersModel for FluxTransformer2DModel {
    type Config = FluxConfig;
    type Error = FluxError;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn read_config(path: &Path) -> Result<FluxConfig> {
        FluxConfig::from_file(path)
    }

    fn new_in(config: &FluxConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let dim = config.inner_dim();
        let time_text = &root / "time_text_embed";
        let embedder =
            |name: &str, input: i64| TimestepEmbedding::new(&(&time_text / name), input, dim);
        Ok(FluxTransformer2DModel {
            x_embedder: Linear::new(&(&root / "x_embedder"), config.in_channels, dim, true),
            context_embedder: Linear::new(
                &(&root / "context_embedder"),
                config.joint_attention_dim,
                dim,
                true,
            ),
            timestep_embedder: embedder("timestep_embedder", 256),
            guidance_embedder: config
                .guidance_embeds
                .then(|| embedder("guidance_embedder", 256)),
            text_embedder: embedder("text_embedder", config.pooled_projection_dim),
            double: (0..config.num_layers)
                .map(|i| DoubleBlock::new(&(&root / "transformer_blocks" / i), config))
                .collect(),
            single: (0..config.num_single_layers)
                .map(|i| SingleBlock::new(&(&root / "single_transformer_blocks" / i), config))
                .collect(),
            norm_out: ContinuousNorm::new(&(&root / "norm_out"), dim),
            proj_out: Linear::new(&(&root / "proj_out"), dim, config.out_channels(), true),
            config: config.clone(),
            vs,
        })
    }

    fn config(&self) -> &FluxConfig {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }
}
