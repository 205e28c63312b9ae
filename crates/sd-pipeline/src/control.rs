//! ControlNets in the pipeline: loading (diffusers folders, original single
//! files), the request's control images prepared as diffusers'
//! `prepare_image` does, and each step's residuals as
//! `StableDiffusionControlNetPipeline.__call__` computes them (per-net
//! scales, the start/end window, guess mode, several nets summed in order).

use std::path::{Path, PathBuf};

use image::RgbImage;
use sd_controlnet::{ldm, ControlNetConfig, ControlNetModel, ControlScale};
use sd_core::shared::Frozen;
use sd_core::weights::{KeyMap, MappedFile};
use sd_core::DiffusersModel;
use sd_unet::{AddedConditions, ControlResiduals};
use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::pipeline::StableDiffusion;

/// A ControlNet the pipeline holds, and the file or folder it came from.
#[derive(Debug)]
pub struct LoadedControlNet {
    path: PathBuf,
    model: Frozen<ControlNetModel>,
}

impl LoadedControlNet {
    /// The folder or file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model.
    pub fn model(&self) -> &ControlNetModel {
        &self.model
    }
}

/// The pipeline's loaded ControlNets, in the order their images are given.
#[derive(Default)]
pub(crate) struct ControlNets(Vec<LoadedControlNet>);

/// What a request asks of the loaded ControlNets.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Control {
    /// One control image per loaded ControlNet, in their order; resized to
    /// the output size (Lanczos) when it differs.
    pub images: Vec<RgbImage>,
    /// One scale per ControlNet (diffusers' `controlnet_conditioning_scale`).
    pub scales: Vec<f64>,
    /// The fraction of the steps before which the ControlNets are off.
    pub start: f64,
    /// The fraction of the steps after which the ControlNets are off.
    pub end: f64,
    /// Guess mode: the ControlNets see only the conditional half under CFG,
    /// their residuals ramped from 0.1 to 1.0 from the first skip to the
    /// mid block.
    pub guess_mode: bool,
}

impl Control {
    /// Control images, every ControlNet at scale 1.0, on for all steps.
    pub fn new(images: Vec<RgbImage>) -> Self {
        let scales = vec![1.0; images.len()];
        Control {
            images,
            scales,
            start: 0.0,
            end: 1.0,
            guess_mode: false,
        }
    }

    /// The same with these per-ControlNet scales.
    pub fn with_scales(mut self, scales: Vec<f64>) -> Self {
        self.scales = scales;
        self
    }

    /// The same, on only from `start` to `end` (fractions of the steps).
    pub fn with_window(mut self, start: f64, end: f64) -> Self {
        self.start = start;
        self.end = end;
        self
    }

    /// The same in guess mode.
    pub fn with_guess_mode(mut self, on: bool) -> Self {
        self.guess_mode = on;
        self
    }

    /// What needs no model: scales are numbers, and the window is
    /// `0 <= start < end <= 1`. (The request layer checks it before any
    /// work; a run checks it again with the loaded ControlNets.)
    pub fn check(&self) -> Result<()> {
        if let Some(s) = self.scales.iter().find(|s| !s.is_finite()) {
            return Err(PipelineError::request(
                Field::ControlScales,
                format!("{s} is not a number"),
            ));
        }
        let (start, end) = (self.start, self.end);
        if !(0.0..=1.0).contains(&start) || !(0.0..=1.0).contains(&end) || start >= end {
            return Err(PipelineError::request(
                Field::ControlWindow,
                format!("start {start} and end {end}: need 0 <= start < end <= 1"),
            ));
        }
        Ok(())
    }
}

impl StableDiffusion {
    /// Loads a ControlNet for this model: a diffusers folder (config.json and
    /// weights, or a pipeline folder's `controlnet/`), or a single
    /// `.safetensors` file in the original layout (`control_model.*`,
    /// `input_hint_block.*`, `zero_convs.*`) or with diffusers names. Pickled
    /// `.pth`/`.ckpt` files are refused. A ControlNet made for another
    /// family (another text width or UNet layout) is refused here, before
    /// any step runs.
    pub fn load_controlnet(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.unet_for_controlnet(path)?;
        let device = self.placement.home(self.devices().unet);
        let dtype = self.denoiser.dtype();
        let model = if path.is_dir() {
            let dir = match path.join("controlnet").join("config.json").is_file() {
                true => path.join("controlnet"),
                false => path.to_path_buf(),
            };
            ControlNetModel::from_folder(&dir, device, dtype, None)?
        } else {
            self.controlnet_from_file(path, device, dtype)?
        };
        self.check_controlnet(path, &model)?;
        self.controlnets.0.push(LoadedControlNet {
            path: path.to_path_buf(),
            model: Frozen::new(model),
        });
        Ok(())
    }

    /// The UNet a ControlNet joins; SD3's transformer takes none here.
    fn unet_for_controlnet(&self, path: &Path) -> Result<&sd_unet::UNet2DConditionModel> {
        self.unet().ok_or_else(|| {
            PipelineError::model(
                path,
                "ControlNets are for UNet models (SD1.x, SD2.x, SDXL); SD3 ControlNets are \
                 not supported yet",
            )
        })
    }

    /// The loaded ControlNets, in the order their images are given.
    pub fn controlnets(&self) -> &[LoadedControlNet] {
        &self.controlnets.0
    }

    /// The ControlNets on the UNet's device: temporary copies in low-memory mode.
    pub(crate) fn controlnets_for_run(&self) -> Result<Vec<crate::cow::Cow<'_, ControlNetModel>>> {
        let device = self.devices().unet;
        self.controlnets
            .0
            .iter()
            .map(|c| self.placement.for_run(c.model(), device, false))
            .collect()
    }

    /// Unloads every ControlNet.
    pub fn clear_controlnets(&mut self) {
        self.controlnets.0.clear();
    }

    fn controlnet_from_file(
        &self,
        path: &Path,
        device: Device,
        dtype: Kind,
    ) -> Result<ControlNetModel> {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(extension, "pth" | "pt" | "ckpt" | "bin") {
            return Err(PipelineError::model(
                path,
                "a pickled checkpoint: this library reads only .safetensors (pickles can run \
                 code). Convert it once, e.g. with `python -c \"import torch, safetensors.torch as s; \
                 s.save_file({k: v.contiguous() for k, v in torch.load('IN.pth', map_location='cpu', \
                 weights_only=True).items()}, 'OUT.safetensors')\"`",
            ));
        }
        let file = MappedFile::open(path)?;
        let shapes = file.shapes()?;
        let files = [path.to_path_buf()];
        if ldm::is_ldm(&shapes) {
            let unet = self.unet_for_controlnet(path)?;
            let config = ldm::config_from_shapes(&shapes, unet.config())?;
            let keys = ldm::LdmControlNetKeys::new(&config, &shapes)?;
            return Ok(ControlNetModel::from_files(
                &config,
                &files,
                device,
                dtype,
                &|k| keys.map(k),
            )?);
        }
        // Diffusers names in a lone file: its config.json beside it.
        let beside = path.with_file_name("config.json");
        if !beside.is_file() {
            return Err(PipelineError::model(
                path,
                "diffusers weight names but no config.json beside the file (put the model's \
                 config.json next to it, or pass the folder)",
            ));
        }
        let config = ControlNetConfig::from_file(&beside)?;
        Ok(ControlNetModel::from_files(
            &config,
            &files,
            device,
            dtype,
            &|k| KeyMap::To(k.to_string()),
        )?)
    }

    /// The ControlNet's residuals must fit this UNet's skips and text width.
    fn check_controlnet(&self, path: &Path, model: &ControlNetModel) -> Result<()> {
        let theirs = model.config().cross_attention_dim()?;
        let unet = self.unet_for_controlnet(path)?;
        let unet_blocks = unet.config().blocks()?;
        let ours = unet_blocks[unet_blocks.len() - 1].cross_attention_dim;
        if theirs != ours {
            return Err(PipelineError::model(
                path,
                format!(
                    "this ControlNet is made for {}, the model is {}",
                    sd_core::family::describe_cross_attention(theirs),
                    sd_core::family::describe_cross_attention(ours)
                ),
            ));
        }
        let theirs = &model.config().unet;
        let layers = |blocks: Vec<sd_unet::config::BlockSettings>| -> Vec<i64> {
            blocks.iter().map(|b| b.layers).collect()
        };
        if theirs.block_out_channels != unet.config().block_out_channels
            || layers(theirs.blocks()?) != layers(unet_blocks)
        {
            return Err(PipelineError::model(
                path,
                format!(
                    "the ControlNet's blocks ({:?} channels) do not match the UNet's ({:?})",
                    theirs.block_out_channels,
                    unet.config().block_out_channels
                ),
            ));
        }
        Ok(())
    }

    /// Stage 0 for control: counts, scales and the window.
    pub(crate) fn check_control(&self, control: Option<&Control>) -> Result<()> {
        let loaded = self.controlnets().len();
        let Some(control) = control else {
            if loaded > 0 {
                return Err(PipelineError::request(
                    Field::ControlImages,
                    format!("{loaded} ControlNet(s) are loaded: give one control image each"),
                ));
            }
            return Ok(());
        };
        if loaded == 0 {
            return Err(PipelineError::request(
                Field::ControlImages,
                "control images given but no ControlNet is loaded",
            ));
        }
        if control.images.len() != loaded {
            return Err(PipelineError::request(
                Field::ControlImages,
                format!(
                    "{} control images for {loaded} ControlNets",
                    control.images.len()
                ),
            ));
        }
        if control.scales.len() != loaded {
            return Err(PipelineError::request(
                Field::ControlScales,
                format!("{} scales for {loaded} ControlNets", control.scales.len()),
            ));
        }
        control.check()
    }
}

/// One run's control, ready for the loop.
pub(crate) struct RunControl<'a> {
    nets: Vec<&'a ControlNetModel>,
    /// Per net: (batch, 3, H, W), CFG-doubled unless in guess mode.
    images: Vec<Tensor>,
    scales: Vec<f64>,
    window: (f64, f64),
    guess_mode: bool,
}

impl<'a> RunControl<'a> {
    /// The control images as diffusers' `prepare_image` makes them.
    pub fn new(
        nets: Vec<&'a ControlNetModel>,
        control: &Control,
        (width, height): (u32, u32),
        batch: usize,
        cfg: bool,
    ) -> Result<Self> {
        let guess_mode = control.guess_mode || nets.iter().any(|n| n.forces_guess_mode());
        let images = control
            .images
            .iter()
            .zip(&nets)
            .map(|(image, net)| {
                let tensor = control_image_tensor(image, width, height)
                    .repeat_interleave_self_int(batch as i64, 0, None)
                    .to_device(net.device())
                    .to_kind(net.dtype());
                match cfg && !guess_mode {
                    true => Tensor::cat(&[&tensor, &tensor], 0),
                    false => tensor,
                }
            })
            .collect();
        Ok(RunControl {
            nets,
            images,
            scales: control.scales.clone(),
            window: (control.start, control.end),
            guess_mode,
        })
    }

    /// The residuals at loop step `step` of `total`, or `None` when every
    /// ControlNet is outside its window (diffusers then scales them by 0,
    /// which adds exact zeros: skipping them gives the same numbers).
    /// `input` is the scaled (CFG-doubled) 4-channel latents, `single` the
    /// scaled undoubled ones (guess mode's input).
    #[allow(clippy::too_many_arguments)]
    pub fn residuals(
        &self,
        (step, total): (usize, usize),
        input: &Tensor,
        single: impl FnOnce() -> Result<Tensor>,
        t: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
        cfg: bool,
    ) -> Result<Option<ControlResiduals>> {
        let (start, end) = self.window;
        let off = (step as f64 / total as f64) < start || ((step + 1) as f64 / total as f64) > end;
        if off {
            return Ok(None);
        }
        // Guess mode under CFG: the nets see only the conditional half.
        let halves = self.guess_mode && cfg;
        let halved;
        let (input, context, added) = if halves {
            let second = |x: &Tensor| x.chunk(2, 0)[1].shallow_clone();
            halved = added.map(|a| AddedConditions {
                text_embeds: second(&a.text_embeds),
                time_ids: second(&a.time_ids),
            });
            (single()?, second(context), halved.as_ref())
        } else {
            (input.shallow_clone(), context.shallow_clone(), added)
        };
        let mut sum: Option<ControlResiduals> = None;
        for ((net, image), &scale) in self.nets.iter().zip(&self.images).zip(&self.scales) {
            let scale = ControlScale {
                scale,
                guess_mode: self.guess_mode,
            };
            let r = net.forward(&input, t, &context, added, image, scale)?;
            sum = Some(match sum {
                None => r,
                Some(s) => s.plus(&r),
            });
        }
        let Some(mut sum) = sum else { return Ok(None) };
        if halves {
            let pad = |x: &Tensor| Tensor::cat(&[x.zeros_like(), x.shallow_clone()], 0);
            sum = ControlResiduals {
                down: sum.down.iter().map(pad).collect(),
                mid: pad(&sum.mid),
            };
        }
        Ok(Some(sum))
    }
}

/// (1, 3, h, w) f32 in [0, 1], resized to the output size when needed, with
/// the (1, h, w, 3) layout underneath as diffusers' numpy conversion leaves
/// it (the first convolution's rounding depends on it).
fn control_image_tensor(image: &RgbImage, width: u32, height: u32) -> Tensor {
    let resized;
    let image = if image.dimensions() == (width, height) {
        image
    } else {
        // (diffusers' image processor resizes with Pillow's LANCZOS)
        resized = crate::resample::resize_lanczos(image, width, height);
        &resized
    };
    crate::images::image_to_unit_tensor(image)
}
