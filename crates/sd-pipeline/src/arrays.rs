//! `ndarray` at the API edge, for callers that keep pixels and latents in
//! arrays rather than `image` buffers or `tch` tensors (feature `ndarray`,
//! on by default). Layouts are numpy's, as diffusers hands them out with
//! `output_type="np"`: images (height, width, 3) `u8`, masks (height, width)
//! `u8` (white is repainted), latents (batch, channels, height, width) `f32`.

use image::{GrayImage, RgbImage};
use ndarray::{Array2, Array3, Array4, ArrayView2, ArrayView3, ArrayView4};
use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::generate::Generation;

/// An image as a (height, width, 3) array.
pub fn image_to_array(image: &RgbImage) -> Array3<u8> {
    let (w, h) = image.dimensions();
    Array3::from_shape_vec((h as usize, w as usize, 3), image.as_raw().clone())
        .expect("an RgbImage holds height * width * 3 bytes")
}

/// A (height, width, 3) array as an image (for image-to-image and inpainting).
pub fn image_from_array(array: ArrayView3<'_, u8>) -> Result<RgbImage> {
    let (h, w, c) = array.dim();
    if c != 3 {
        return Err(PipelineError::request(
            Field::Image,
            format!("array is {h}x{w}x{c}; an RGB image is (height, width, 3)"),
        ));
    }
    let bytes = array.iter().copied().collect();
    RgbImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| PipelineError::request(Field::Image, "array does not fit an image"))
}

/// A mask as a (height, width) array.
pub fn mask_to_array(mask: &GrayImage) -> Array2<u8> {
    let (w, h) = mask.dimensions();
    Array2::from_shape_vec((h as usize, w as usize), mask.as_raw().clone())
        .expect("a GrayImage holds height * width bytes")
}

/// A (height, width) array as an inpainting mask.
pub fn mask_from_array(array: ArrayView2<'_, u8>) -> Result<GrayImage> {
    let (h, w) = array.dim();
    GrayImage::from_raw(w as u32, h as u32, array.iter().copied().collect())
        .ok_or_else(|| PipelineError::request(Field::Mask, "array does not fit an image"))
}

/// Latents (batch, channels, height, width) as an f32 tensor on the CPU,
/// for [`crate::StableDiffusion::decode_latents`].
pub fn latents_from_array(array: ArrayView4<'_, f32>) -> Tensor {
    let shape: Vec<i64> = array.shape().iter().map(|&d| d as i64).collect();
    let data: Vec<f32> = array.iter().copied().collect();
    Tensor::from_slice(&data).view(shape.as_slice())
}

impl Generation {
    /// The images as one (batch, height, width, 3) array.
    pub fn images_array(&self) -> Array4<u8> {
        let (w, h) = self.images.first().map_or((0, 0), |i| i.dimensions());
        let bytes = self
            .images
            .iter()
            .flat_map(|i| i.as_raw().iter().copied())
            .collect();
        Array4::from_shape_vec((self.images.len(), h as usize, w as usize, 3), bytes)
            .expect("every image of a generation has the same size")
    }

    /// The final latents (before the VAE decode) as an f32 array.
    pub fn latents_array(&self) -> Result<Array4<f32>> {
        let (b, c, h, w) = self.latents.size4()?;
        let flat = self
            .latents
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .flatten(0, -1);
        let data = Vec::<f32>::try_from(&flat)?;
        Array4::from_shape_vec((b as usize, c as usize, h as usize, w as usize), data)
            .map_err(|e| PipelineError::request(Field::Latents, e.to_string()))
    }
}
