//! transformers' `CLIPImageProcessor` (the torchvision backend transformers 5
//! loads by default, which diffusers' IP-Adapter pipelines use): the shortest
//! side resized to the encoder's size with torch's antialiased bicubic on
//! the 8-bit pixels, a centre crop, then OpenAI CLIP's mean and deviation.

use image::RgbImage;
use tch::{Kind, Tensor};

use crate::error::{ClipError, Result};

/// OpenAI CLIP's per-channel mean and deviation (`OPENAI_CLIP_MEAN`/`_STD`).
const MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// `image` as the encoder takes it: (1, 3, size, size), f32 on the CPU.
pub fn preprocess(image: &RgbImage, size: i64) -> Result<Tensor> {
    let (w, h) = (image.width() as i64, image.height() as i64);
    if w == 0 || h == 0 || size <= 0 {
        return Err(ClipError::invalid(
            "image prompt",
            format!("a {w}x{h} image cannot be resized to {size}"),
        ));
    }
    // 1. 8-bit (1, 3, h, w) over the image's own bytes (channels last in
    //    memory, as torchvision's tensor of a PIL image is)
    let pixels = Tensor::from_slice(image.as_raw())
        .view([1, h, w, 3])
        .permute([0, 3, 1, 2]);
    // 2. shortest side to `size`, the other by the ratio, truncated
    let (short, long) = (w.min(h), w.max(h));
    let long_side = (size * long) as f64 / short as f64;
    let (new_h, new_w) = match w <= h {
        true => (long_side as i64, size),
        false => (size, long_side as i64),
    };
    let resized = pixels.internal_upsample_bicubic2d_aa([new_h, new_w], false, None, None);
    // 3. centre crop (the resize leaves both sides >= size)
    let (top, left) = ((new_h - size) / 2, (new_w - size) / 2);
    let cropped = resized.narrow(2, top, size).narrow(3, left, size);
    // 4. rescale and normalise, fused as transformers does: mean and
    //    deviation times 255, in f32
    let channels = |values: [f64; 3]| Tensor::from_slice(&values).to_kind(Kind::Float) * 255.0;
    let (mean, std) = (channels(MEAN), channels(STD));
    Ok((cropped.to_kind(Kind::Float) - mean.view([-1, 1, 1])) / std.view([-1, 1, 1]))
}

/// Several images, one batch (each preprocessed alone, as transformers does
/// for images of different sizes).
pub fn preprocess_all(images: &[RgbImage], size: i64) -> Result<Tensor> {
    let each = images
        .iter()
        .map(|image| preprocess(image, size))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&each, 0))
}
