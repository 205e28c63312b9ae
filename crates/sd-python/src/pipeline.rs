//! The `StableDiffusion` class: a loaded pipeline shared by Python threads.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use sd_pipeline::front::{Checked, EncoderChoice, Limits, ModelSource, Parameters};
use sd_pipeline::{Control, Generation, LoraSpec, Request, Result, StableDiffusion as Pipeline};

use crate::extras::{image_prompts, load_extras, source, Extras};
use crate::{parse_sampler_name, pil, to_py};

/// A loaded Stable Diffusion model (SD1.x, SD2.x, SDXL; a diffusers
/// folder, a single `.safetensors` checkpoint or a hub repo id).
#[pyclass(frozen, module = "sd_rs")]
pub struct StableDiffusion {
    /// Runs take the read lock; swapping LoRAs takes the write lock.
    pipeline: Arc<RwLock<Pipeline>>,
    model: ModelSource,
    /// The LoRAs of a call that names none.
    loras: Vec<LoraSpec>,
    lora_dir: Option<PathBuf>,
    /// One per loaded ControlNet.
    control_scales: Vec<f64>,
    /// One per loaded IP-Adapter.
    ip_scales: Vec<f64>,
}

/// A merged LoRA's file, modules merged, and keys skipped with why.
type LoraReport = (PathBuf, usize, Vec<(String, String)>);

/// `t5=`: `True` (required), `False` (left out), or a T5 file's path.
#[derive(FromPyObject)]
enum T5Arg {
    Flag(bool),
    File(String),
}

#[pymethods]
impl StableDiffusion {
    #[new]
    #[pyo3(signature = (
        model, device="cpu", dtype="f32", scheduler=None, low_memory=false, loras=vec![],
        embeddings=vec![], controlnets=vec![], tiny_vae=None, lora_dir=None, t5=None,
        clip_l=None, clip_g=None, config_dir=None, vae=None, ip_adapters=vec![], image_encoder=None,
        compiled=false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &str,
        device: &str,
        dtype: &str,
        scheduler: Option<&str>,
        low_memory: bool,
        loras: Vec<(PathBuf, f64)>,
        embeddings: Vec<PathBuf>,
        controlnets: Vec<(PathBuf, f64)>,
        tiny_vae: Option<PathBuf>,
        lora_dir: Option<PathBuf>,
        t5: Option<T5Arg>,
        clip_l: Option<PathBuf>,
        clip_g: Option<PathBuf>,
        config_dir: Option<PathBuf>,
        vae: Option<PathBuf>,
        ip_adapters: Vec<(PathBuf, f64)>,
        image_encoder: Option<PathBuf>,
        compiled: bool,
    ) -> PyResult<Self> {
        let value_error = |e: &dyn std::fmt::Display| PyValueError::new_err(e.to_string());
        let device = sd_core::device::parse_device(device).map_err(|e| value_error(&e))?;
        let kind = sd_core::device::parse_dtype(dtype).map_err(|e| value_error(&e))?;
        // (a model that is not there does not load: RuntimeError, as before)
        let source = ModelSource::detect(model)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        let mut builder = Pipeline::builder()
            .source(&source)
            .device(device)
            .dtype(kind)
            .low_memory(low_memory);
        let t5 = match t5 {
            None => None,
            Some(T5Arg::Flag(false)) => Some("none".to_string()),
            Some(T5Arg::Flag(true)) => Some("required".to_string()),
            Some(T5Arg::File(file)) => Some(file),
        };
        let encoders = EncoderChoice::parse(t5.as_deref(), clip_l.as_deref(), clip_g.as_deref())
            .and_then(|choice| choice.with_vae(vae.as_deref()))
            .map_err(|e| value_error(&e))?;
        builder = encoders.apply(builder);
        if let Some(dir) = config_dir {
            builder = builder.config_dir(dir);
        }
        if let Some(name) = scheduler {
            builder = builder.sampler(parse_sampler_name(name)?);
        }
        let extras = Extras {
            loras: loras
                .into_iter()
                .map(|(p, s)| LoraSpec::new(p, s))
                .collect(),
            embeddings,
            controlnets,
            tiny_vae,
            ip_adapters,
            image_encoder,
            compiled,
        };
        let pipeline = py
            .detach(|| load_extras(builder.build()?, &extras))
            .map_err(to_py)?;
        Ok(StableDiffusion {
            pipeline: Arc::new(RwLock::new(pipeline)),
            model: source,
            loras: extras.loras,
            lora_dir,
            control_scales: extras.controlnets.iter().map(|(_, s)| *s).collect(),
            ip_scales: extras.ip_adapters.iter().map(|(_, s)| *s).collect(),
        })
    }

    /// The sampler runs use (its CLI name: `ddim`, `euler-a`, ...).
    #[getter]
    fn scheduler(&self) -> &'static str {
        self.read().sampler().name()
    }

    /// The model's native (width, height).
    #[getter]
    fn default_size(&self) -> (u32, u32) {
        self.read().default_size()
    }

    /// What each merged LoRA did: (file, modules merged, keys skipped).
    #[getter]
    fn lora_reports(&self) -> Vec<LoraReport> {
        self.read()
            .lora_reports()
            .iter()
            .map(|r| (r.path.clone(), r.applied_total(), r.skipped.clone()))
            .collect()
    }

    /// Generates `num_images` images; with `init_image` image-to-image
    /// (`strength` of the schedule), with `mask` too inpainting (white is
    /// repainted). `loras`: this call's [(file, scale)] instead of the
    /// constructor's; `<lora:NAME:SCALE>` tags in the prompt are found in
    /// `lora_dir`. `control_images`: one per loaded ControlNet. SD3:
    /// `max_sequence_length` (T5's tokens; default 256, FLUX.1-dev 512) and
    /// `skip_layer_guidance` (transformer blocks, e.g. [7, 8, 9] for SD3.5
    /// Medium, at diffusers' default scale and window). FLUX: `guidance` is
    /// the distilled guidance; `true_cfg_scale` with a negative prompt runs
    /// true CFG. `steps` and `guidance` default to the model's own
    /// (FLUX.1-dev 28 at 3.5, FLUX.1-schnell 4), else 20 at 7.5. Hires fix:
    /// `hires_scale` (a factor), `hires_upscaler` (latent, latent-bicubic,
    /// ..., lanczos, nearest, or an upscaler model file), `hires_steps`,
    /// `hires_strength`. `ip_adapter_images`: one entry per loaded
    /// IP-Adapter, an image or a list of images.
    /// `callback(step, total)` runs after each step; returning `False`
    /// stops the run with `sd_rs.Cancelled`. Each image carries its PNG
    /// `parameters` text in `image.info`.
    #[pyo3(signature = (
        prompt, negative_prompt="", steps=None, guidance=None, seed=0, width=None, height=None,
        num_images=1, init_image=None, strength=0.8, mask=None, callback=None, scheduler=None,
        loras=None, control_images=None, clip_skip=0, max_sequence_length=None,
        skip_layer_guidance=None, true_cfg_scale=None, hires_scale=None, hires_upscaler="latent",
        hires_steps=None, hires_strength=0.7, ip_adapter_images=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: &str,
        negative_prompt: &str,
        steps: Option<usize>,
        guidance: Option<f64>,
        seed: u64,
        width: Option<u32>,
        height: Option<u32>,
        num_images: usize,
        init_image: Option<&Bound<'py, PyAny>>,
        strength: f64,
        mask: Option<&Bound<'py, PyAny>>,
        callback: Option<Py<PyAny>>,
        scheduler: Option<&str>,
        loras: Option<Vec<(PathBuf, f64)>>,
        control_images: Option<Vec<Bound<'py, PyAny>>>,
        clip_skip: usize,
        max_sequence_length: Option<usize>,
        skip_layer_guidance: Option<Vec<usize>>,
        true_cfg_scale: Option<f64>,
        hires_scale: Option<f64>,
        hires_upscaler: &str,
        hires_steps: Option<usize>,
        hires_strength: f64,
        ip_adapter_images: Option<Vec<Bound<'py, PyAny>>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let mut p = Parameters::new(prompt);
        p.true_cfg_scale = true_cfg_scale;
        if let Some(scale) = hires_scale {
            use sd_pipeline::{HiresFix, HiresSize, HiresUpscaler};
            let upscaler = HiresUpscaler::parse_or_file(hires_upscaler).map_err(|e| {
                PyValueError::new_err(e.to_string().replace("hires: ", "hires_upscaler: "))
            })?;
            let mut hires = HiresFix::new(HiresSize::Scale(scale), upscaler);
            (hires.steps, hires.strength) = (hires_steps, hires_strength);
            p.hires = Some(hires);
        }
        p.max_sequence_length = max_sequence_length;
        p.skip_layer_guidance = skip_layer_guidance.map(sd_pipeline::SkipLayerGuidance::new);
        p.negative_prompt = negative_prompt.to_string();
        // (the model's own defaults, FLUX.1's, else 20 steps at 7.5)
        let defaults = self.read().model_defaults();
        p.steps = steps.or(defaults.map(|d| d.steps)).unwrap_or(20);
        p.guidance = guidance.or(defaults.map(|d| d.guidance)).unwrap_or(7.5);
        p.seed = Some(seed);
        (p.width, p.height) = (width, height);
        p.batch_size = num_images;
        p.sampler = scheduler.map(parse_sampler_name).transpose()?;
        p.prompt_options.clip_skip = clip_skip;
        p.loras = match loras {
            Some(loras) => loras
                .into_iter()
                .map(|(p, s)| LoraSpec::new(p, s))
                .collect(),
            None => self.loras.clone(),
        };
        p.source = source(init_image, mask, strength)?;
        if let Some(images) = control_images {
            let images = images
                .iter()
                .map(|image| pil::to_rgb(image, "control_images"))
                .collect::<PyResult<_>>()?;
            p.control = Some(Control::new(images).with_scales(self.control_scales.clone()));
        }
        if let Some(images) = ip_adapter_images {
            p.image_prompts = image_prompts(&images, &self.ip_scales)?;
        }
        let checked = p
            .check(&Limits::NONE, self.lora_dir.as_deref())
            .map_err(to_py)?;
        let [request] = <[Request; 1]>::try_from(checked.requests())
            .map_err(|_| PyValueError::new_err("one run per call"))?;
        let generation = self.run(py, &checked, request, callback)?;
        let sampler = self.read().sampler();
        let model = self.model.name();
        generation
            .images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                let text = checked
                    .generation_parameters(i, image.dimensions(), sampler, &model)
                    .infotext();
                pil::from_rgb(py, image, Some(text))
            })
            .collect()
    }

    /// One image per prompt, image `i` from `seeds[i]`, as one UNet batch
    /// when the pipeline can combine them (txt2img; prompts of one length),
    /// else one after another. What a server does with requests that agree
    /// in everything but prompt and seed. The same seed and prompt give the
    /// image `generate` gives, up to the rounding of a larger batch.
    #[pyo3(signature = (
        prompts, seeds, negative_prompts=None, steps=20, guidance=7.5, width=None, height=None,
        scheduler=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate_batch<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        seeds: Vec<u64>,
        negative_prompts: Option<Vec<String>>,
        steps: usize,
        guidance: f64,
        width: Option<u32>,
        height: Option<u32>,
        scheduler: Option<&str>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let negatives = negative_prompts.unwrap_or_else(|| vec![String::new(); prompts.len()]);
        if seeds.len() != prompts.len() || negatives.len() != prompts.len() {
            return Err(PyValueError::new_err(format!(
                "seeds: {} prompts, {} seeds, {} negative prompts: give one of each per image",
                prompts.len(),
                seeds.len(),
                negatives.len()
            )));
        }
        let sampler = scheduler.map(parse_sampler_name).transpose()?;
        let mut checked = Vec::new();
        for ((prompt, seed), negative) in prompts.iter().zip(&seeds).zip(&negatives) {
            let mut p = Parameters::new(prompt.as_str());
            p.negative_prompt = negative.clone();
            (p.steps, p.guidance, p.seed) = (steps, guidance, Some(*seed));
            (p.width, p.height, p.sampler) = (width, height, sampler);
            p.loras = self.loras.clone();
            checked.push(
                p.check(&Limits::NONE, self.lora_dir.as_deref())
                    .map_err(to_py)?,
            );
        }
        let outcomes = self.run_many(py, &checked);
        let mut images = Vec::new();
        for (outcome, _) in outcomes {
            for image in outcome.map_err(to_py)? {
                images.push(pil::from_rgb(py, &image, None)?);
            }
        }
        Ok(images)
    }

    /// Runs checked A1111 jobs (`sd_rs.check_a1111`): those sharing one
    /// batch key as one UNet batch, the rest one by one. For each job a
    /// dict: `images` (PNG bytes with the `parameters` text), `seeds`,
    /// `infotexts`; or `error` and `field` when it could not run.
    fn run_a1111<'py>(
        &self,
        py: Python<'py>,
        jobs: Vec<PyRef<'py, crate::a1111::A1111Job>>,
    ) -> PyResult<Vec<Bound<'py, pyo3::types::PyDict>>> {
        crate::a1111::run(self, py, &jobs)
    }

    fn __repr__(&self) -> String {
        let pipeline = self.read();
        format!(
            "StableDiffusion({:?}, family={:?}, scheduler={:?})",
            self.model.name(),
            pipeline.family(),
            pipeline.sampler().name()
        )
    }
}

impl StableDiffusion {
    /// The pipeline's own sampler and the model's name (for PNG parameters).
    pub(crate) fn sampler_and_model(&self) -> (sd_pipeline::SamplerKind, String) {
        (self.read().sampler(), self.model.name())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pipeline> {
        self.pipeline.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// `work` on the pipeline with `loras` merged: under the read lock when
    /// they are merged already, else under the write lock after merging
    /// them. Called with the GIL released (a waiting thread holds no GIL).
    pub(crate) fn with_loras<T>(
        &self,
        loras: &[LoraSpec],
        work: impl FnOnce(&Pipeline) -> Result<T>,
    ) -> Result<T> {
        {
            let pipeline = self.read();
            if pipeline.loras() == loras {
                return work(&pipeline);
            }
        }
        let mut pipeline = self
            .pipeline
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if pipeline.loras() != loras {
            pipeline.set_loras(loras)?;
        }
        work(&pipeline)
    }

    /// Runs `request` of `checked` with the GIL released; the callback
    /// takes it back for each step it is called.
    fn run(
        &self,
        py: Python<'_>,
        checked: &Checked,
        request: Request,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Generation> {
        let mut callback_error = None;
        let error_slot = &mut callback_error;
        // (the request moves in: it may hold tensors, Send but not Sync)
        let generation = py.detach(move || {
            self.with_loras(checked.loras(), |pipeline| {
                let scheduler = pipeline.scheduler_for(&request)?;
                pipeline.generate_with(&request, scheduler, &mut |info| {
                    let Some(callback) = &callback else {
                        return ControlFlow::Continue(());
                    };
                    Python::attach(|py| match callback.call1(py, (info.step, info.total)) {
                        Ok(answer) if answer.bind(py).is(&*pyo3::types::PyBool::new(py, false)) => {
                            ControlFlow::Break(())
                        }
                        Ok(_) => ControlFlow::Continue(()),
                        Err(error) => {
                            *error_slot = Some(error);
                            ControlFlow::Break(())
                        }
                    })
                })
            })
        });
        if let Some(error) = callback_error {
            return Err(error);
        }
        generation.map_err(to_py)
    }

    /// Checked requests that may share a batch (one key, one run each) as
    /// one UNet batch, else one after another; each one's images (or
    /// error) and the number of images in the UNet batch it ran in.
    pub(crate) fn run_many(
        &self,
        py: Python<'_>,
        checked: &[Checked],
    ) -> Vec<(Result<Vec<image::RgbImage>>, usize)> {
        py.detach(|| {
            let key = checked.first().and_then(Checked::batch_key);
            let together =
                checked.len() > 1 && key.is_some() && checked.iter().all(|c| c.batch_key() == key);
            // (a batch that fails runs again one by one: each request
            // then gets its own error, and the others their images)
            if together {
                if let Ok(Some(mut images)) = self.run_together(checked) {
                    let total = images.len();
                    return checked
                        .iter()
                        .map(|c| (Ok(images.drain(..c.images()).collect()), total))
                        .collect();
                }
            }
            checked
                .iter()
                .map(|c| (self.run_alone(c), c.parameters().batch_size))
                .collect()
        })
    }

    /// `None` when the pipeline cannot combine the requests (prompts of
    /// different lengths).
    fn run_together(&self, checked: &[Checked]) -> Result<Option<Vec<image::RgbImage>>> {
        self.with_loras(checked[0].loras(), |pipeline| {
            let requests: Vec<Request> = checked.iter().flat_map(Checked::requests).collect();
            match pipeline.combine_requests(&requests)? {
                Some(batch) => Ok(Some(pipeline.generate(&batch)?.images)),
                None => Ok(None),
            }
        })
    }

    fn run_alone(&self, checked: &Checked) -> Result<Vec<image::RgbImage>> {
        self.with_loras(checked.loras(), |pipeline| {
            let mut images = Vec::new();
            for request in checked.requests() {
                images.extend(pipeline.generate(&request)?.images);
            }
            Ok(images)
        })
    }
}
