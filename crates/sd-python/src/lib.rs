//! `sd_rs`: this library from Python (PyO3). One class,
//! [`StableDiffusion`], loads a model once; `generate` runs txt2img,
//! img2img or inpainting and returns PIL images. The GIL is released while
//! a run computes, so Python threads (or Ray replicas' request threads)
//! overlap; a run's per-step callback takes the GIL back only to call it.
//!
//! ```python
//! import sd_rs
//! pipe = sd_rs.StableDiffusion("crates/sd-cli/shapes")
//! [image] = pipe.generate("a large blue triangle on a white background", steps=20, seed=0)
//! image.save("triangle.png")
//! ```
//!
//! Errors are Python exceptions carrying the Rust message: `ValueError`
//! for a request or option that cannot be used (the field is named),
//! `sd_rs.Cancelled` when the callback returned `False`, `RuntimeError`
//! for the rest (a model folder that does not load, libtorch).

use std::ops::ControlFlow;
use std::sync::Arc;

use image::{GrayImage, RgbImage};
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sd_pipeline::{PipelineError, Request, SamplerKind, Seed, StableDiffusion as Pipeline, Task};

pyo3::create_exception!(
    sd_rs,
    Cancelled,
    PyException,
    "The callback returned False: the run stopped."
);

/// A Rust error as the Python exception a caller would expect.
fn to_py(error: PipelineError) -> PyErr {
    match error {
        PipelineError::InvalidInput { .. } => PyValueError::new_err(error.to_string()),
        PipelineError::Cancelled { .. } => Cancelled::new_err(error.to_string()),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// A loaded Stable Diffusion model (SD1.x, SD2.x, SDXL; a diffusers
/// folder or a single `.safetensors` checkpoint).
#[pyclass(frozen, module = "sd_rs")]
struct StableDiffusion {
    pipeline: Arc<Pipeline>,
}

#[pymethods]
impl StableDiffusion {
    #[new]
    #[pyo3(signature = (model, device="cpu", dtype="f32", scheduler=None, low_memory=false))]
    fn new(
        py: Python<'_>,
        model: std::path::PathBuf,
        device: &str,
        dtype: &str,
        scheduler: Option<&str>,
        low_memory: bool,
    ) -> PyResult<Self> {
        let value_error = |e: &dyn std::fmt::Display| PyValueError::new_err(e.to_string());
        let device = sd_core::device::parse_device(device).map_err(|e| value_error(&e))?;
        let kind = sd_core::device::parse_dtype(dtype).map_err(|e| value_error(&e))?;
        let sampler = scheduler.map(parse_sampler).transpose()?;
        let mut builder = Pipeline::builder()
            .device(device)
            .dtype(kind)
            .low_memory(low_memory);
        builder = if model.is_file() {
            builder.single_file(&model)
        } else {
            builder.model_dir(&model)
        };
        if let Some(sampler) = sampler {
            builder = builder.scheduler(sampler);
        }
        let pipeline = py.detach(|| builder.build()).map_err(to_py)?;
        Ok(StableDiffusion {
            pipeline: Arc::new(pipeline),
        })
    }

    /// The sampler runs use (its CLI name: `ddim`, `euler-a`, ...).
    #[getter]
    fn scheduler(&self) -> &'static str {
        self.pipeline.sampler().name()
    }

    /// The model's native (width, height).
    #[getter]
    fn default_size(&self) -> (u32, u32) {
        self.pipeline.default_size()
    }

    /// Generates `num_images` images; with `init_image` image-to-image
    /// (`strength` of the schedule), with `mask` too inpainting (white is
    /// repainted). `callback(step, total)` runs after each step; returning
    /// `False` stops the run with `sd_rs.Cancelled`.
    #[pyo3(signature = (
        prompt, negative_prompt="", steps=20, guidance=7.5, seed=0, width=None, height=None,
        num_images=1, init_image=None, strength=0.8, mask=None, callback=None, scheduler=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: &str,
        negative_prompt: &str,
        steps: usize,
        guidance: f64,
        seed: u64,
        width: Option<u32>,
        height: Option<u32>,
        num_images: usize,
        init_image: Option<&Bound<'py, PyAny>>,
        strength: f64,
        mask: Option<&Bound<'py, PyAny>>,
        callback: Option<Py<PyAny>>,
        scheduler: Option<&str>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let sampler = scheduler.map(parse_sampler).transpose()?;
        let mut request = Request::new(prompt);
        request.negative_prompt = Some(negative_prompt.to_string()).filter(|n| !n.is_empty());
        request.steps = steps;
        request.guidance_scale = guidance;
        request.width = width;
        request.height = height;
        request.num_images = num_images;
        request.seed = Seed::Batch(seed);
        request.task = match (init_image, mask) {
            (None, None) => Task::TextToImage,
            (None, Some(_)) => {
                return Err(PyValueError::new_err("mask: give init_image too"));
            }
            (Some(image), None) => Task::ImageToImage {
                image: rgb_from_pil(image)?,
                strength,
            },
            (Some(image), Some(mask)) => Task::Inpaint {
                image: rgb_from_pil(image)?,
                mask: gray_from_pil(mask)?,
                strength,
            },
        };
        run(py, &self.pipeline, request, sampler, callback)
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
        let sampler = scheduler.map(parse_sampler).transpose()?;
        let negatives = negative_prompts.unwrap_or_else(|| vec![String::new(); prompts.len()]);
        if seeds.len() != prompts.len() || negatives.len() != prompts.len() {
            return Err(PyValueError::new_err(format!(
                "seeds: {} prompts, {} seeds, {} negative prompts: give one of each per image",
                prompts.len(),
                seeds.len(),
                negatives.len()
            )));
        }
        let requests: Vec<Request> = prompts
            .iter()
            .zip(&seeds)
            .zip(&negatives)
            .map(|((prompt, seed), negative)| {
                let mut request = Request::new(prompt);
                request.negative_prompt = Some(negative.clone()).filter(|n| !n.is_empty());
                request.steps = steps;
                request.guidance_scale = guidance;
                request.width = width;
                request.height = height;
                request.seed = Seed::Batch(*seed);
                request
            })
            .collect();
        if requests.len() > 1 {
            let pipeline = self.pipeline.clone();
            let combined = py.detach(move || pipeline.combine_requests(&requests));
            if let Some(batch) = combined.map_err(to_py)? {
                return run(py, &self.pipeline, batch, sampler, None);
            }
        }
        // Alone (one prompt, or prompts that cannot share a batch).
        let mut images = Vec::new();
        for ((prompt, seed), negative) in prompts.iter().zip(&seeds).zip(&negatives) {
            images.extend(self.generate(
                py, prompt, negative, steps, guidance, *seed, width, height, 1, None, 0.8, None,
                None, scheduler,
            )?);
        }
        Ok(images)
    }

    fn __repr__(&self) -> String {
        format!(
            "StableDiffusion({:?}, family={:?}, scheduler={:?})",
            self.pipeline.model_dir().display().to_string(),
            self.pipeline.family(),
            self.pipeline.sampler().name()
        )
    }
}

/// Runs `request` with the GIL released; the callback takes it back for
/// each step it is called.
fn run<'py>(
    py: Python<'py>,
    pipeline: &Arc<Pipeline>,
    request: Request,
    sampler: Option<SamplerKind>,
    callback: Option<Py<PyAny>>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let pipeline = pipeline.clone();
    let mut callback_error = None;
    let error_slot = &mut callback_error;
    // (moved in: a Request may hold tensors, which are Send but not Sync)
    let generation = py.detach(move || {
        let scheduler = match sampler {
            Some(kind) => pipeline.new_scheduler_of(kind)?,
            None => pipeline.scheduler_for(&request)?,
        };
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
    });
    if let Some(error) = callback_error {
        return Err(error);
    }
    let generation = generation.map_err(to_py)?;
    generation
        .images
        .iter()
        .map(|image| pil_from_rgb(py, image))
        .collect()
}

/// An A1111 sampler name ("Euler a", "DPM++ 2M Karras") or a CLI one.
fn parse_sampler(name: &str) -> PyResult<SamplerKind> {
    SamplerKind::from_any_name(name).map_err(|e| PyValueError::new_err(format!("scheduler: {e}")))
}

/// The CLI name of an A1111 or CLI sampler name: `sampler_name("Euler a")`
/// is `"euler-a"`. Raises ValueError for an unknown name.
#[pyfunction]
fn sampler_name(name: &str) -> PyResult<&'static str> {
    parse_sampler(name).map(SamplerKind::name)
}

/// `PIL.Image.frombytes("RGB", size, data)`.
fn pil_from_rgb<'py>(py: Python<'py>, image: &RgbImage) -> PyResult<Bound<'py, PyAny>> {
    let pil = py.import("PIL.Image")?;
    let bytes = PyBytes::new(py, image.as_raw());
    pil.call_method1("frombytes", ("RGB", image.dimensions(), bytes))
}

/// The bytes of a PIL image converted to `mode`, and its size.
fn pil_bytes(image: &Bound<'_, PyAny>, mode: &str, field: &str) -> PyResult<(Vec<u8>, u32, u32)> {
    let converted = image
        .call_method1("convert", (mode,))
        .map_err(|e| PyValueError::new_err(format!("{field}: not a PIL image ({e})")))?;
    let (width, height): (u32, u32) = converted.getattr("size")?.extract()?;
    let bytes: Vec<u8> = converted.call_method0("tobytes")?.extract()?;
    Ok((bytes, width, height))
}

fn rgb_from_pil(image: &Bound<'_, PyAny>) -> PyResult<RgbImage> {
    let (bytes, width, height) = pil_bytes(image, "RGB", "init_image")?;
    RgbImage::from_raw(width, height, bytes)
        .ok_or_else(|| PyValueError::new_err("init_image: its bytes do not match its size"))
}

fn gray_from_pil(image: &Bound<'_, PyAny>) -> PyResult<GrayImage> {
    let (bytes, width, height) = pil_bytes(image, "L", "mask")?;
    GrayImage::from_raw(width, height, bytes)
        .ok_or_else(|| PyValueError::new_err("mask: its bytes do not match its size"))
}

#[pymodule]
fn sd_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<StableDiffusion>()?;
    m.add_function(wrap_pyfunction!(sampler_name, m)?)?;
    m.add("Cancelled", m.py().get_type::<Cancelled>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
