//! Control images from ordinary ones: Canny edges (imageproc's detector:
//! a Gaussian blur of sigma 1.4, Sobel gradients, non-maximum suppression,
//! hysteresis between the two thresholds), and grayscale, invert and resize.
//! Canny ControlNets were trained on OpenCV's `cv2.Canny(image, 100, 200)`,
//! which blurs nothing first: thresholds near those work here too, and edges
//! come out a little smoother.

use image::{imageops::FilterType, RgbImage};

use crate::error::{PipelineError, Result};
use crate::front::Field;

/// White edges on black, as Canny ControlNets expect. Thresholds are edge
/// strengths, `sqrt(dx^2 + dy^2)` of the Sobel gradients (up to about 1140);
/// `low` must not exceed `high`.
pub fn canny(image: &RgbImage, low: f32, high: f32) -> Result<RgbImage> {
    for (name, value) in [("low", low), ("high", high)] {
        if !value.is_finite() || value < 0.0 {
            return Err(PipelineError::request(
                Field::Thresholds,
                format!("{name} {value} is not a threshold (0 or more)"),
            ));
        }
    }
    if low > high {
        return Err(PipelineError::request(
            Field::Thresholds,
            format!("low {low} is above high {high}"),
        ));
    }
    let gray = image::imageops::grayscale(image);
    let edges = imageproc::edges::canny(&gray, low, high);
    Ok(gray_to_rgb(&edges))
}

/// The luma of each pixel in all three channels.
pub fn grayscale(image: &RgbImage) -> RgbImage {
    gray_to_rgb(&image::imageops::grayscale(image))
}

/// 255 minus each channel (black lines on white become white on black).
pub fn invert(image: &RgbImage) -> RgbImage {
    let mut out = image.clone();
    image::imageops::invert(&mut out);
    out
}

/// Resized to `width` x `height` with a Lanczos filter (what the pipeline
/// does to a control image of another size).
pub fn resize(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(PipelineError::request(
            Field::Size,
            format!("{width}x{height} has no pixels"),
        ));
    }
    Ok(image::imageops::resize(
        image,
        width,
        height,
        FilterType::Lanczos3,
    ))
}

fn gray_to_rgb(gray: &image::GrayImage) -> RgbImage {
    RgbImage::from_fn(gray.width(), gray.height(), |x, y| {
        let v = gray.get_pixel(x, y)[0];
        image::Rgb([v, v, v])
    })
}
