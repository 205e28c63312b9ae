//! AUTOMATIC1111's "Extras" body (`POST /sdapi/v1/extra-single-image`): an
//! image, an upscaler by name (`upscaler_1`) and the size wanted, by factor
//! (`upscaling_resize`, `resize_mode` 0) or to a width and height
//! (`upscaling_resize_w`/`_h`, `resize_mode` 1). Fields this project does not
//! use (`gfpgan_visibility`, `upscaler_2`, ...) are accepted and ignored.

use serde::Deserialize;

use crate::error::{PipelineError, Result};
use crate::front::a1111::decode_image;
use crate::front::Field;

/// The body as A1111 clients send it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ExtrasRequest {
    /// The image, base64 (a data URL allowed).
    pub image: String,
    /// 0: enlarge by `upscaling_resize`; 1: to `upscaling_resize_w` x `_h`.
    pub resize_mode: u8,
    /// The factor (A1111's default 2).
    pub upscaling_resize: f64,
    /// The width for `resize_mode` 1.
    pub upscaling_resize_w: u32,
    /// The height for `resize_mode` 1.
    pub upscaling_resize_h: u32,
    /// `None`, `Lanczos`, `Nearest`, or a model of `/sdapi/v1/upscalers`.
    pub upscaler_1: String,
}

impl Default for ExtrasRequest {
    fn default() -> Self {
        ExtrasRequest {
            image: String::new(),
            resize_mode: 0,
            upscaling_resize: 2.0,
            upscaling_resize_w: 512,
            upscaling_resize_h: 512,
            upscaler_1: "None".into(),
        }
    }
}

/// A checked Extras request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Extras {
    /// The image to enlarge.
    pub image: image::RgbImage,
    /// The upscaler's name as given.
    pub upscaler: String,
    /// The size of the result.
    pub size: (u32, u32),
}

/// The largest side a result may have.
const MAX_SIDE: f64 = 16384.0;

impl ExtrasRequest {
    /// The image decoded and the size worked out, every field checked.
    pub fn check(&self) -> Result<Extras> {
        let image = decode_image(Field::Image, &self.image)?.to_rgb8();
        let (w, h) = image.dimensions();
        let size = match self.resize_mode {
            0 => {
                let factor = self.upscaling_resize;
                if !(factor > 0.0 && factor <= 8.0) {
                    let message = format!("{factor} is outside (0, 8]");
                    return Err(PipelineError::request(Field::UpscalingResize, message));
                }
                let scaled = |side: u32| (side as f64 * factor).round().max(1.0);
                (scaled(w), scaled(h))
            }
            1 => (
                self.upscaling_resize_w as f64,
                self.upscaling_resize_h as f64,
            ),
            other => {
                let message = format!("{other}: 0 (by factor) or 1 (to width and height)");
                return Err(PipelineError::request(Field::ResizeMode, message));
            }
        };
        if size.0 < 1.0 || size.1 < 1.0 || size.0 > MAX_SIDE || size.1 > MAX_SIDE {
            let message = format!(
                "a result of {}x{} is outside 1..={MAX_SIDE} a side",
                size.0, size.1
            );
            return Err(PipelineError::request(Field::UpscalingResize, message));
        }
        Ok(Extras {
            image,
            upscaler: self.upscaler_1.clone(),
            size: (size.0 as u32, size.1 as u32),
        })
    }
}
