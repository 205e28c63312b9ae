//! The model each step runs: a UNet (SD1.x, SD2.x, SDXL: noise or v on a
//! beta schedule) or SD3's multimodal diffusion transformer (velocity, flow
//! matching). Everything else in a run (conditioning, latents, guidance,
//! the sampler, the decode) is shared; this is where the two differ.

use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_flux::FluxTransformer2DModel;
use sd_mmdit::SD3Transformer2DModel;
use sd_unet::{AddedConditions, UNet2DConditionModel};
use tch::{Kind, Tensor};

use crate::cow::Cow;
use crate::error::Result;

/// A pipeline's denoiser.
// One per pipeline, never in a collection: boxing would only add a hop.
#[allow(clippy::large_enum_variant)]
#[non_exhaustive]
pub enum Denoiser {
    /// SD1.x, SD2.x and SDXL.
    UNet(Frozen<UNet2DConditionModel>),
    /// SD3 and SD3.5.
    Transformer(Frozen<SD3Transformer2DModel>),
    /// FLUX.1.
    Flux(Frozen<FluxTransformer2DModel>),
}

impl Denoiser {
    /// The dtype of its weights (the pipeline's).
    pub fn dtype(&self) -> Kind {
        match self {
            Denoiser::UNet(m) => m.var_store().kind(),
            Denoiser::Transformer(m) => m.var_store().kind(),
            Denoiser::Flux(m) => m.var_store().kind(),
        }
    }

    /// Channels it reads: latents, plus mask and masked-image latents for
    /// inpainting models (9 for SD, 33 for SD3).
    pub fn in_channels(&self) -> i64 {
        match self {
            Denoiser::UNet(m) => m.config().in_channels,
            Denoiser::Transformer(m) => m.config().in_channels,
            // (a packed token holds a 2x2 patch of the latent's channels)
            Denoiser::Flux(m) => m.config().in_channels / 4,
        }
    }

    /// Latent pixels per step of its grid: 1 for a UNet (it upsamples to
    /// each skip connection), the patch size for the transformer.
    pub fn latent_unit(&self) -> i64 {
        match self {
            Denoiser::UNet(_) => 1,
            Denoiser::Transformer(m) => m.config().patch_size,
            Denoiser::Flux(_) => 2,
        }
    }

    /// Its native latent size (diffusers' `default_sample_size`).
    pub fn sample_size(&self) -> i64 {
        match self {
            Denoiser::UNet(m) => m.config().sample_size.unwrap_or(64),
            Denoiser::Transformer(m) => m.config().sample_size,
            // (diffusers' FluxPipeline.default_sample_size: 1024 px)
            Denoiser::Flux(_) => 128,
        }
    }

    /// The UNet, for UNet models.
    pub fn unet(&self) -> Option<&UNet2DConditionModel> {
        match self {
            Denoiser::UNet(m) => Some(m),
            _ => None,
        }
    }

    /// The transformer, for SD3 models.
    pub fn transformer(&self) -> Option<&SD3Transformer2DModel> {
        match self {
            Denoiser::Transformer(m) => Some(m),
            _ => None,
        }
    }

    /// The transformer, for FLUX models.
    pub fn flux(&self) -> Option<&FluxTransformer2DModel> {
        match self {
            Denoiser::Flux(m) => Some(m),
            _ => None,
        }
    }

    /// The widest activation per latent pixel of one batch item (a lower
    /// bound for the memory check): the UNet's first block, the
    /// transformer's width per token over its patch.
    pub(crate) fn activation_width(&self) -> i64 {
        match self {
            Denoiser::UNet(m) => m.config().block_out_channels[0],
            Denoiser::Transformer(m) => {
                let c = m.config();
                let per_token = c.num_attention_heads * c.attention_head_dim;
                (per_token / (c.patch_size * c.patch_size)).max(1)
            }
            Denoiser::Flux(m) => (m.config().inner_dim() / 4).max(1),
        }
    }
}

/// The denoiser on its compute device for one run.
#[allow(clippy::large_enum_variant)] // one per run, as `Denoiser`
pub(crate) enum RunDenoiser<'a> {
    UNet(Cow<'a, UNet2DConditionModel>),
    Transformer(Cow<'a, SD3Transformer2DModel>),
    Flux(Cow<'a, FluxTransformer2DModel>),
}

/// The transformer's velocity for `input` at timestep `t`, given per batch
/// item as diffusers' `t.expand(batch)` (f32: diffusers' flow-matching
/// timesteps are `sigma * 1000` in f32); `skip_layers` leaves those blocks
/// out (skip-layer guidance).
pub(crate) fn velocity(
    model: &SD3Transformer2DModel,
    input: &Tensor,
    t: f64,
    context: &Tensor,
    pooled: &Tensor,
    skip_layers: &[usize],
) -> Result<Tensor> {
    let timestep = Tensor::full([input.size()[0]], t, (Kind::Float, input.device()));
    Ok(model.forward(input, &timestep, context, pooled, skip_layers)?)
}

/// FLUX's velocity for the latents (batch, 16, h, w) at timestep `t`
/// (`sigma * 1000`, f32): packed into 2x2 patches with their ids, the
/// timestep given as diffusers' pipeline gives it (`t` in the latents'
/// dtype, divided by 1000), FLUX.1-dev's distilled `guidance` (f32), the output
/// unpacked. (The sampler steps the unpacked latents: its step works value
/// by value, so packing before or after it changes nothing.)
pub(crate) fn flux_velocity(
    model: &FluxTransformer2DModel,
    latents: &Tensor,
    t: f64,
    (context, pooled): (&Tensor, &Tensor),
    guidance: Option<f64>,
) -> Result<Tensor> {
    use sd_flux::packing::{image_ids, pack, text_ids, unpack};
    let (b, _, h, w) = latents.size4()?;
    let device = latents.device();
    let timestep = Tensor::full([b], t, (Kind::Float, device)).to_kind(latents.kind()) / 1000.0;
    let guidance = guidance.map(|g| Tensor::full([b], g, (Kind::Float, device)));
    let (img_ids, txt_ids) = (
        image_ids(h / 2, w / 2, device),
        text_ids(context.size()[1], device),
    );
    let tokens = pack(latents);
    let mut inputs =
        sd_flux::FluxInputs::new(&tokens, context, pooled, &timestep, (&img_ids, &txt_ids));
    inputs.guidance = guidance.as_ref();
    Ok(unpack(&model.forward(&inputs)?, h, w))
}

/// SDXL's added conditions, or SD3's pooled text: the second input the
/// denoiser takes besides the token context.
pub(crate) enum Extra {
    None,
    Added(AddedConditions),
    Pooled(Tensor),
}

impl Extra {
    /// SDXL's added conditions, if these are.
    pub(crate) fn added(&self) -> Option<&AddedConditions> {
        match self {
            Extra::Added(a) => Some(a),
            _ => None,
        }
    }
}
