//! Between `image` buffers and tensors, as diffusers' `VaeImageProcessor`:
//! pixels to [-1, 1], masks to {0, 1}, decoded images back to 8-bit RGB.

use image::{GrayImage, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::front::Field;

/// An RGB image as (1, 3, h, w) f32 in [-1, 1].
///
/// The tensor keeps the (1, h, w, 3) pixel layout underneath (channels-last
/// strides), exactly as diffusers' numpy-to-torch conversion does: libtorch's
/// convolutions take another code path for that layout, and the VAE's
/// numbers differ in the last bits if the layouts differ.
pub fn image_to_tensor(image: &RgbImage) -> Tensor {
    image_to_unit_tensor(image) * 2.0 - 1.0
}

/// An RGB image as (1, 3, h, w) f32 in [0, 1] (the step before
/// [`image_to_tensor`]'s [-1, 1]; ControlNets take this), with the same
/// channels-last layout underneath.
pub fn image_to_unit_tensor(image: &RgbImage) -> Tensor {
    let (w, h) = image.dimensions();
    let data = Tensor::from_slice(image.as_raw()).view([1, h as i64, w as i64, 3]);
    data.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0
}

/// A mask as (1, 1, h, w) f32: grayscale/255, then 0 below 0.5 and 1 from 0.5 up.
pub fn mask_to_tensor(mask: &GrayImage) -> Tensor {
    let (w, h) = mask.dimensions();
    let unit = Tensor::from_slice(mask.as_raw())
        .view([1, 1, h as i64, w as i64])
        .to_kind(Kind::Float)
        / 255.0;
    unit.ge(0.5).to_kind(Kind::Float)
}

/// Decoded images (batch, 3, h, w) in about [-1, 1] to 8-bit RGB, as
/// diffusers' `VaeImageProcessor.postprocess`: `x * 0.5 + 0.5` clamped to
/// [0, 1] in the images' own dtype (f16 rounds there), then f32 (its numpy
/// step) times 255, rounded half to even. The arithmetic runs where the
/// images are (elementwise ops round the same on every device); only the
/// bytes cross to the host.
pub fn tensor_to_images(images: &Tensor) -> Result<Vec<RgbImage>> {
    let (batch, _, h, w) = images.size4()?;
    let unit = (images * 0.5 + 0.5).clamp(0.0, 1.0).to_kind(Kind::Float);
    let pixels = (unit * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu);
    (0..batch)
        .map(|i| {
            let bytes = Vec::<u8>::try_from(pixels.get(i).flatten(0, -1))?;
            RgbImage::from_raw(w as u32, h as u32, bytes).ok_or_else(|| {
                PipelineError::request(Field::Image, "decoded image has an unexpected size")
            })
        })
        .collect()
}
