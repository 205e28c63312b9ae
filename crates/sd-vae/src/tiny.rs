//! diffusers' `AutoencoderTiny`: TAESD and TAESDXL, small convolutional
//! encoders and decoders distilled from the full VAE (a few MB, a fraction
//! of its time and memory). Used for fast final decodes and live previews;
//! its images are close to the full VAE's, not equal.
//!
//! Weights load from a diffusers folder (`encoder.layers.*`,
//! `decoder.layers.*`) or from the original `taesd_encoder.safetensors` /
//! `taesd_decoder.safetensors` pair (bare `Sequential` indices; the
//! original decoder has a parameter-free clamp at index 0, so its indices
//! are one higher).

use std::path::{Path, PathBuf};

use sd_core::nn::Conv2d;
use sd_core::weights::KeyMap;
use sd_core::DiffusersModel;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::error::{Result, VaeError};
use crate::tiny_config::{TinyActFn, TinyVaeConfig};

/// Conv, act, conv, act, conv, plus a skip, then ReLU (`AutoencoderTinyBlock`).
#[derive(Debug)]
struct TinyBlock {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
}

impl TinyBlock {
    fn new(vs: &tch::nn::Path<'_>, input: i64, output: i64) -> Self {
        let conv = vs / "conv";
        TinyBlock {
            convs: [
                Conv2d::new(&(&conv / 0), input, output, 3, 1, 1),
                Conv2d::new(&(&conv / 2), output, output, 3, 1, 1),
                Conv2d::new(&(&conv / 4), output, output, 3, 1, 1),
            ],
            skip: (input != output)
                .then(|| Conv2d::no_bias(&(vs / "skip"), input, output, 1, 1, 0)),
        }
    }

    fn forward(&self, x: &Tensor, act: TinyActFn) -> Tensor {
        let h = activate(&self.convs[0].forward(x), act);
        let h = activate(&self.convs[1].forward(&h), act);
        let h = self.convs[2].forward(&h);
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x.shallow_clone(),
        };
        (h + skip).relu()
    }
}

/// One entry of the encoder's or decoder's `layers` sequence.
#[derive(Debug)]
enum Layer {
    Conv(Conv2d),
    Block(TinyBlock),
    Act,
    Upsample(i64),
}

fn activate(x: &Tensor, act: TinyActFn) -> Tensor {
    match act {
        TinyActFn::Relu => x.relu(),
        TinyActFn::Silu => x.silu(),
    }
}

fn run(layers: &[Layer], x: &Tensor, act: TinyActFn) -> Tensor {
    layers
        .iter()
        .fold(x.shallow_clone(), |x, layer| match layer {
            Layer::Conv(conv) => conv.forward(&x),
            Layer::Block(block) => block.forward(&x, act),
            Layer::Act => activate(&x, act),
            Layer::Upsample(f) => {
                let (_, _, h, w) = x.size4().expect("a feature map");
                x.upsample_nearest2d([h * f, w * f], Some(*f as f64), Some(*f as f64))
            }
        })
}

/// diffusers' `AutoencoderTiny`.
pub struct AutoencoderTiny {
    config: TinyVaeConfig,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    vs: VarStore,
}

// SAFETY: encode/decode read the weights and allocate new tensors. Tensors reached
// through `var_store()` share storage with the weights; writing them in place while
// other threads run the model is a race libtorch's own handles allow, outside what this
// marker promises.
unsafe impl sd_core::shared::ReadOnlyShared for AutoencoderTiny {}

impl std::fmt::Debug for AutoencoderTiny {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoencoderTiny")
            .field("config", &self.config)
            .finish()
    }
}

impl AutoencoderTiny {
    /// The weights' dtype.
    pub fn dtype(&self) -> Kind {
        self.vs.kind()
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Images (batch, 3, H, W) in [-1, 1] to latents (batch, 4, H/8, W/8),
    /// already in the UNet's scale (TAESD's `scaling_factor` is 1).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let channels = image.size().get(1).copied();
        if image.dim() != 4 || channels != Some(self.config.in_channels) {
            return Err(VaeError::invalid(
                "tiny vae input",
                format!(
                    "images must be (batch, {}, h, w), got {:?}",
                    self.config.in_channels,
                    image.size()
                ),
            ));
        }
        // TAESD works on [0, 1] images.
        let x = (image + 1.0) / 2.0;
        Ok(run(&self.encoder, &x, self.config.act_fn))
    }

    /// Latents (batch, latent_channels, h, w) to images in about [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let channels = z.size().get(1).copied();
        if z.dim() != 4 || channels != Some(self.config.latent_channels) {
            return Err(VaeError::invalid(
                "tiny vae input",
                format!(
                    "latents must be (batch, {}, h, w), got {:?}",
                    self.config.latent_channels,
                    z.size()
                ),
            ));
        }
        // A soft clamp of the latents to (-3, 3), as TAESD was trained.
        let x = (z / 3.0).tanh() * 3.0;
        let x = run(&self.decoder, &x, self.config.act_fn);
        Ok(x * 2.0 - 1.0)
    }

    /// Loads a folder: diffusers' layout (`config.json` and
    /// `diffusion_pytorch_model.safetensors`) or the original release's
    /// `*_encoder.safetensors` and `*_decoder.safetensors` (taesd, taesdxl).
    pub fn from_dir(dir: &Path, device: Device, dtype: Kind) -> Result<Self> {
        if dir.join("config.json").is_file() {
            return Self::from_folder(dir, device, dtype, None);
        }
        let find = |suffix: &str| -> Result<PathBuf> {
            let entries = std::fs::read_dir(dir).map_err(|e| sd_core::CoreError::io(dir, e))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(suffix))
                })
                .collect();
            found.sort();
            found.into_iter().next().ok_or_else(|| {
                VaeError::invalid(
                    dir.display().to_string(),
                    format!(
                        "neither a diffusers AutoencoderTiny folder (config.json) nor a TAESD \
                         release (no *{suffix})"
                    ),
                )
            })
        };
        let (encoder, decoder) = (find("_encoder.safetensors")?, find("_decoder.safetensors")?);
        Self::from_original(&encoder, &decoder, device, dtype)
    }

    /// Loads the original release's encoder and decoder files; the
    /// architecture (widths, blocks per stage, channels) is read off their
    /// shapes.
    pub fn from_original(
        encoder: &Path,
        decoder: &Path,
        device: Device,
        dtype: Kind,
    ) -> Result<Self> {
        let config = config_from_original(
            &sd_core::weights::MappedFile::open(encoder)?.shapes()?,
            &sd_core::weights::MappedFile::open(decoder)?.shapes()?,
        )
        .map_err(|message| VaeError::invalid(decoder.display().to_string(), message))?;
        let model = Self::new_in(&config, device, dtype)?;
        let map = |file: usize, key: &str| original_key(file == 1, key);
        sd_core::weights::load_mapped_per_file(
            model.var_store(),
            &[encoder, decoder],
            &map,
            false,
        )?;
        Ok(model)
    }
}

type Shapes = std::collections::BTreeMap<String, Vec<i64>>;

/// The `Sequential` of an original file: per index, whether it is a block,
/// and its first weight's shape.
fn sequence(shapes: &Shapes) -> Vec<(bool, Vec<i64>)> {
    let mut layers = std::collections::BTreeMap::new();
    for (key, shape) in shapes {
        let Some((index, rest)) = key.split_once('.') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        match rest {
            "weight" => layers.insert(index, (false, shape.clone())),
            "conv.0.weight" => layers.insert(index, (true, shape.clone())),
            _ => None,
        };
    }
    layers.into_values().collect()
}

/// A TAESD config from the shapes of an original encoder/decoder pair.
fn config_from_original(
    encoder: &Shapes,
    decoder: &Shapes,
) -> std::result::Result<TinyVaeConfig, String> {
    let bad = || "not a TAESD encoder/decoder pair (no stages found)".to_string();
    let mut config = TinyVaeConfig::default();
    // Encoder: per stage a convolution (stride 2 after the first) and its
    // blocks, then a last convolution to the latents.
    let layers = sequence(encoder);
    let (last, stages) = layers.split_last().ok_or_else(bad)?;
    config.in_channels = *stages.first().and_then(|l| l.1.get(1)).ok_or_else(bad)?;
    config.latent_channels = last.1[0];
    let (mut widths, mut blocks) = (Vec::new(), Vec::new());
    for (is_block, shape) in stages {
        match (is_block, blocks.last_mut()) {
            (true, Some(n)) => *n += 1,
            (true, None) => return Err(bad()),
            (false, _) => {
                widths.push(shape[0]);
                blocks.push(0);
            }
        }
    }
    (config.encoder_block_out_channels, config.num_encoder_blocks) = (widths, blocks);
    // Decoder: a first convolution, then per stage its blocks and a
    // convolution (upsamples and activations carry no weights).
    let layers = sequence(decoder);
    let (last, _) = layers.split_last().ok_or_else(bad)?;
    let (mut widths, mut blocks, mut count) = (Vec::new(), Vec::new(), 0);
    for (is_block, shape) in layers.iter().skip(1) {
        if *is_block {
            count += 1;
        } else {
            widths.push(shape[1]);
            blocks.push(count);
            count = 0;
        }
    }
    config.out_channels = last.1[0];
    (config.decoder_block_out_channels, config.num_decoder_blocks) = (widths, blocks);
    if config.encoder_block_out_channels.is_empty() || config.decoder_block_out_channels.is_empty()
    {
        return Err(bad());
    }
    Ok(config)
}

/// An original TAESD key (`Sequential` index first) as diffusers names it.
fn original_key(decoder: bool, key: &str) -> KeyMap {
    let (index, rest) = key.split_once('.').unwrap_or((key, ""));
    let Ok(index) = index.parse::<usize>() else {
        return KeyMap::To(format!("(taesd) {key}"));
    };
    match decoder {
        // The decoder's index 0 is a parameter-free clamp.
        true if index > 0 => KeyMap::To(format!("decoder.layers.{}.{rest}", index - 1)),
        true => KeyMap::To(format!("(taesd) {key}")),
        false => KeyMap::To(format!("encoder.layers.{index}.{rest}")),
    }
}

impl DiffusersModel for AutoencoderTiny {
    type Config = TinyVaeConfig;
    type Error = VaeError;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn read_config(path: &Path) -> Result<TinyVaeConfig> {
        TinyVaeConfig::from_file(path)
    }

    fn new_in(config: &TinyVaeConfig, device: Device, kind: Kind) -> Result<Self> {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        // Encoder: per stage a convolution (stride 2 after the first), then
        // its blocks; a last convolution to the latent channels.
        let enc = &root / "encoder" / "layers";
        let mut encoder = Vec::new();
        let widths = &config.encoder_block_out_channels;
        for (i, (&width, &blocks)) in widths.iter().zip(&config.num_encoder_blocks).enumerate() {
            let at = encoder.len();
            encoder.push(Layer::Conv(if i == 0 {
                Conv2d::new(&(&enc / at), config.in_channels, width, 3, 1, 1)
            } else {
                Conv2d::no_bias(&(&enc / at), width, width, 3, 2, 1)
            }));
            for _ in 0..blocks {
                let at = encoder.len();
                encoder.push(Layer::Block(TinyBlock::new(&(&enc / at), width, width)));
            }
        }
        let last = widths[widths.len() - 1];
        let at = encoder.len();
        encoder.push(Layer::Conv(Conv2d::new(
            &(&enc / at),
            last,
            config.latent_channels,
            3,
            1,
            1,
        )));
        // Decoder: a convolution and activation, then per stage its blocks,
        // an upsample and a convolution (bias-free but for the last).
        let dec = &root / "decoder" / "layers";
        let widths = &config.decoder_block_out_channels;
        let mut decoder = vec![
            Layer::Conv(Conv2d::new(
                &(&dec / 0),
                config.latent_channels,
                widths[0],
                3,
                1,
                1,
            )),
            Layer::Act,
        ];
        let stages = widths.len();
        for (i, (&width, &blocks)) in widths.iter().zip(&config.num_decoder_blocks).enumerate() {
            let final_stage = i + 1 == stages;
            for _ in 0..blocks {
                let at = decoder.len();
                decoder.push(Layer::Block(TinyBlock::new(&(&dec / at), width, width)));
            }
            if !final_stage {
                decoder.push(Layer::Upsample(config.upsampling_scaling_factor));
            }
            let at = decoder.len();
            decoder.push(Layer::Conv(if final_stage {
                Conv2d::new(&(&dec / at), width, config.out_channels, 3, 1, 1)
            } else {
                Conv2d::no_bias(&(&dec / at), width, width, 3, 1, 1)
            }));
        }
        Ok(AutoencoderTiny {
            config: config.clone(),
            encoder,
            decoder,
            vs,
        })
    }

    fn config(&self) -> &TinyVaeConfig {
        &self.config
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }
}
