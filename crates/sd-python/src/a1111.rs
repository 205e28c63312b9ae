//! AUTOMATIC1111 request bodies for the Ray Serve app: checked by the
//! request layer (the rules and messages of `sd serve`), batched by its
//! batch key, answered with PNGs carrying the same `parameters` text.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use sd_pipeline::front::a1111::{json_field, GenerateRequest};
use sd_pipeline::front::{Checked, Limits};
use sd_pipeline::parameters::encode_png;

use crate::pipeline::StableDiffusion;
use crate::{invalid, to_py_named};

/// A checked A1111 txt2img/img2img body.
#[pyclass(frozen, module = "sd_rs")]
pub struct A1111Job {
    checked: Checked,
}

/// Parses and checks an A1111 JSON body as `sd serve` does (its default
/// limits); `img2img` for `/sdapi/v1/img2img`; `lora_dir` finds the
/// prompt's `<lora:…>` tags. Raises `InvalidRequest` naming the JSON field.
#[pyfunction]
#[pyo3(signature = (body, img2img=false, lora_dir=None))]
pub fn check_a1111(
    py: Python<'_>,
    body: &str,
    img2img: bool,
    lora_dir: Option<PathBuf>,
) -> PyResult<A1111Job> {
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let request: GenerateRequest =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            invalid(py, &field, &e.into_inner().to_string())
        })?;
    let a1111_error = |e| to_py_named(e, json_field);
    let checked = py
        .detach(|| {
            request
                .parameters(img2img)?
                .check(&Limits::default(), lora_dir.as_deref())
        })
        .map_err(a1111_error)?;
    Ok(A1111Job { checked })
}

#[pymethods]
impl A1111Job {
    /// Jobs with equal keys may share a UNet batch; `None`: it runs alone.
    #[getter]
    fn batch_key(&self) -> Option<String> {
        self.checked.batch_key().map(|key| format!("{key:?}"))
    }

    /// The seed of each image, in order.
    #[getter]
    fn seeds(&self) -> Vec<u64> {
        self.checked.image_seeds()
    }

    /// Images this job makes.
    #[getter]
    fn images(&self) -> usize {
        self.checked.images()
    }
}

/// [`StableDiffusion::run_a1111`](crate::pipeline::StableDiffusion): each
/// job's PNGs, seeds, infotexts and UNet batch size, or its error and field.
pub fn run<'py>(
    pipe: &StableDiffusion,
    py: Python<'py>,
    jobs: &[PyRef<'py, A1111Job>],
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let checked: Vec<Checked> = jobs.iter().map(|j| j.checked.clone()).collect();
    let outcomes = pipe.run_many(py, &checked);
    let (sampler, model) = pipe.sampler_and_model();
    let mut answers = Vec::new();
    for (job, (outcome, batch_images)) in checked.iter().zip(outcomes) {
        let answer = PyDict::new(py);
        match outcome {
            Ok(images) => {
                let mut pngs = Vec::new();
                let mut infotexts = Vec::new();
                for (i, image) in images.iter().enumerate() {
                    let parameters =
                        job.generation_parameters(i, image.dimensions(), sampler, &model);
                    let png =
                        encode_png(image, &parameters).map_err(|e| to_py_named(e, json_field))?;
                    pngs.push(PyBytes::new(py, &png));
                    infotexts.push(parameters.infotext());
                }
                answer.set_item("images", pngs)?;
                answer.set_item("seeds", job.image_seeds())?;
                answer.set_item("infotexts", infotexts)?;
                answer.set_item("batch_images", batch_images)?;
            }
            Err(e) => {
                let error = to_py_named(e, json_field);
                answer.set_item("error", error.value(py).str()?)?;
                answer.set_item("field", error.value(py).getattr("field").ok())?;
            }
        }
        answers.push(answer);
    }
    Ok(answers)
}
