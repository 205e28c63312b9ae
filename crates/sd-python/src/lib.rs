//! `sd_rs`: this library from Python (PyO3). One class,
//! [`StableDiffusion`](pipeline::StableDiffusion), loads a model once;
//! `generate` runs txt2img, img2img, inpainting and ControlNets and returns
//! PIL images. The GIL is released while a run computes, so Python threads
//! (or Ray replicas' request threads) overlap; a run's per-step callback
//! takes the GIL back only to call it. Requests go through the library's
//! request layer (`sd_pipeline::front`), as the CLI's and `sd serve`'s do:
//! the same checks, seeds and PNG parameters.
//!
//! ```python
//! import sd_rs
//! pipe = sd_rs.StableDiffusion("crates/sd-cli/shapes")
//! [image] = pipe.generate("a large blue triangle on a white background", steps=20, seed=0)
//! image.save("triangle.png")
//! ```
//!
//! Errors are Python exceptions carrying the Rust message:
//! `sd_rs.InvalidRequest` (a `ValueError`, with `.field`) for a request or
//! option that cannot be used, `sd_rs.Cancelled` when the callback
//! returned `False`, `RuntimeError` for the rest (a model folder that does
//! not load, libtorch).

mod a1111;
mod extras;
mod pil;
mod pipeline;

use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use sd_pipeline::front::{parse_sampler, Field};
use sd_pipeline::{PipelineError, SamplerKind};

pyo3::create_exception!(
    sd_rs,
    Cancelled,
    PyException,
    "The callback returned False: the run stopped."
);

pyo3::create_exception!(
    sd_rs,
    InvalidRequest,
    PyValueError,
    "A request value or option that cannot be used; `.field` names it."
);

/// The keyword argument of this module that sets `field`.
fn python_name(field: Field) -> &'static str {
    match field {
        Field::Guidance => "guidance",
        Field::BatchSize => "num_images",
        Field::Sampler | Field::SamplerSchedule => "scheduler",
        Field::Lora => "loras",
        Field::Embedding => "embeddings",
        Field::ControlNet | Field::ControlScales => "controlnets",
        Field::ControlImages | Field::ControlWindow => "control_images",
        Field::IpAdapter => "ip_adapter_images",
        other => other.name(),
    }
}

/// `InvalidRequest("FIELD: MESSAGE")` with `.field` set.
fn invalid(py: Python<'_>, field: &str, message: &str) -> PyErr {
    let error = InvalidRequest::new_err(format!("{field}: {message}"));
    // (setting an attribute on a fresh exception object cannot fail)
    let _ = error.value(py).setattr("field", field);
    error
}

/// A Rust error as the Python exception a caller would expect; refused
/// fields named by `naming` (this module's argument names, or A1111's).
fn to_py_named(error: PipelineError, naming: fn(Field) -> &'static str) -> PyErr {
    match error {
        PipelineError::InvalidInput { field, message } => {
            Python::attach(|py| invalid(py, naming(field), &message))
        }
        PipelineError::Cancelled { .. } => Cancelled::new_err(error.to_string()),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

fn to_py(error: PipelineError) -> PyErr {
    to_py_named(error, python_name)
}

/// An A1111 sampler name ("Euler a", "DPM++ 2M Karras") or a CLI one.
fn parse_sampler_name(name: &str) -> PyResult<SamplerKind> {
    parse_sampler(Some(name), None)
        .map_err(to_py)?
        .ok_or_else(|| PyValueError::new_err("scheduler: empty name"))
}

/// The CLI name of an A1111 or CLI sampler name: `sampler_name("Euler a")`
/// is `"euler-a"`. Raises ValueError for an unknown name.
#[pyfunction]
fn sampler_name(name: &str) -> PyResult<&'static str> {
    parse_sampler_name(name).map(SamplerKind::name)
}

/// Converts weights as `sd convert` does: a diffusers folder, single file
/// or .gguf into `output` (.gguf of `type`, default q8_0; or .safetensors of
/// f32/f16/bf16 values). Returns a dict: tensors, quantized, dropped.
#[pyfunction]
#[pyo3(signature = (input, output, r#type = None, denoiser_only = false))]
fn convert<'py>(
    py: Python<'py>,
    input: std::path::PathBuf,
    output: std::path::PathBuf,
    r#type: Option<String>,
    denoiser_only: bool,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    use sd_pipeline::convert::{convert, Target};
    let done = py
        .detach(|| {
            let target = Target::for_output(&output, r#type.as_deref())?;
            convert(&input, &output, target, denoiser_only)
        })
        .map_err(to_py)?;
    let out = pyo3::types::PyDict::new(py);
    out.set_item("tensors", done.tensors)?;
    out.set_item("quantized", done.quantized)?;
    out.set_item("dropped", done.dropped)?;
    Ok(out)
}

/// An image enlarged by an upscaler model as `sd upscale` does it (ESRGAN,
/// Real-ESRGAN, SRVGGNetCompact; `.safetensors` or `.pth`, read without
/// running it), in tiles of `tile` pixels sharing `overlap` (`tile=0`: whole).
/// Returns a PIL image; ValueError for a bad option, RuntimeError for a
/// model that does not load.
#[pyfunction]
#[pyo3(signature = (image, model, tile = 192, overlap = 8, device = "cpu", dtype = "f32"))]
fn upscale<'py>(
    py: Python<'py>,
    image: &Bound<'py, PyAny>,
    model: std::path::PathBuf,
    tile: i64,
    overlap: i64,
    device: &str,
    dtype: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let value_error =
        |e: &dyn std::fmt::Display| pyo3::exceptions::PyValueError::new_err(e.to_string());
    let device = sd_core::device::parse_device(device).map_err(|e| value_error(&e))?;
    let kind = sd_core::device::parse_dtype(dtype).map_err(|e| value_error(&e))?;
    let tiling = match tile {
        0 => None,
        size => Some(sd_upscale::Tiling::new(size, overlap).map_err(|e| value_error(&e))?),
    };
    let rgb = pil::to_rgb(image, "image")?;
    let runtime =
        |e: sd_upscale::UpscaleError| pyo3::exceptions::PyRuntimeError::new_err(e.to_string());
    let out = py
        .detach(|| {
            let upscaler = sd_upscale::Upscaler::open(&model, device, kind)?;
            upscaler.upscale_rgb(&rgb, tiling)
        })
        .map_err(runtime)?;
    pil::from_rgb(py, &out, None)
}

#[pymodule]
fn sd_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<pipeline::StableDiffusion>()?;
    m.add_class::<a1111::A1111Job>()?;
    m.add_function(wrap_pyfunction!(sampler_name, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(upscale, m)?)?;
    m.add_function(wrap_pyfunction!(a1111::check_a1111, m)?)?;
    m.add("Cancelled", m.py().get_type::<Cancelled>())?;
    m.add("InvalidRequest", m.py().get_type::<InvalidRequest>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
