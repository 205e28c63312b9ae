//! PIL images to and from the `image` crate's.

use image::{GrayImage, RgbImage};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// `PIL.Image.frombytes("RGB", size, data)`, with the PNG `parameters`
/// text in `image.info` (where PIL puts it when it reads such a PNG).
pub fn from_rgb<'py>(
    py: Python<'py>,
    image: &RgbImage,
    parameters: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let pil = py.import("PIL.Image")?;
    let bytes = PyBytes::new(py, image.as_raw());
    let out = pil.call_method1("frombytes", ("RGB", image.dimensions(), bytes))?;
    if let Some(text) = parameters {
        out.getattr("info")?.set_item("parameters", text)?;
    }
    Ok(out)
}

/// The bytes of a PIL image converted to `mode`, and its size.
fn bytes(image: &Bound<'_, PyAny>, mode: &str, field: &str) -> PyResult<(Vec<u8>, u32, u32)> {
    let converted = image
        .call_method1("convert", (mode,))
        .map_err(|e| PyValueError::new_err(format!("{field}: not a PIL image ({e})")))?;
    let (width, height): (u32, u32) = converted.getattr("size")?.extract()?;
    let bytes: Vec<u8> = converted.call_method0("tobytes")?.extract()?;
    Ok((bytes, width, height))
}

/// An RGB image from `field`.
pub fn to_rgb(image: &Bound<'_, PyAny>, field: &str) -> PyResult<RgbImage> {
    let (bytes, width, height) = bytes(image, "RGB", field)?;
    RgbImage::from_raw(width, height, bytes)
        .ok_or_else(|| PyValueError::new_err(format!("{field}: its bytes do not match its size")))
}

/// A grayscale image from `field`.
pub fn to_gray(image: &Bound<'_, PyAny>, field: &str) -> PyResult<GrayImage> {
    let (bytes, width, height) = bytes(image, "L", field)?;
    GrayImage::from_raw(width, height, bytes)
        .ok_or_else(|| PyValueError::new_err(format!("{field}: its bytes do not match its size")))
}
