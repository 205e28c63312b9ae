//! Lanczos resizing as Pillow does it (`Image.resize(size, Image.LANCZOS)`),
//! value for value: AUTOMATIC1111 resizes with Pillow ("Just resize" of init
//! images, the `Lanczos` upscaler, the resize after an upscaler model), so
//! the same pixels need the same arithmetic. Pillow resamples 8-bit images
//! in two passes, horizontal then vertical, each pixel a weighted sum with
//! the weights of a 3-lobed windowed sinc normalised per output pixel and
//! turned into 22-bit fixed point; the sum starts at half a unit and is
//! shifted back and clamped to 0..255 (`ImagingResample`, `Resample.c`).

use image::RgbImage;

/// Pillow's fixed point for 8-bit images: `32 - 8 - 2` fraction bits.
const PRECISION_BITS: u32 = 22;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos(x: f64) -> f64 {
    match (-3.0..3.0).contains(&x) {
        true => sinc(x) * sinc(x / 3.0),
        false => 0.0,
    }
}

/// Per output pixel: the first input pixel it reads and its fixed-point
/// weights (Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`).
fn coefficients(input: u32, output: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    (0..output)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(input as i64) - xmin;
            let weights: Vec<f64> = (0..xmax.max(0))
                .map(|x| lanczos((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = weights.iter().sum();
            let unit = (1u32 << PRECISION_BITS) as f64;
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    match w < 0.0 {
                        true => (-0.5 + w * unit) as i32,
                        false => (0.5 + w * unit) as i32,
                    }
                })
                .collect();
            (xmin as usize, fixed)
        })
        .collect()
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `image` resized to `width` x `height` as Pillow's LANCZOS resize.
pub fn resize_lanczos(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if (w, h) == (width, height) || width == 0 || height == 0 {
        return image.clone();
    }
    let half = 1i32 << (PRECISION_BITS - 1);
    let horizontal = match w != width {
        true => {
            let coeffs = coefficients(w, width);
            RgbImage::from_fn(width, h, |x, y| {
                let (start, weights) = &coeffs[x as usize];
                let mut sums = [half; 3];
                for (i, &k) in weights.iter().enumerate() {
                    let pixel = image.get_pixel(*start as u32 + i as u32, y);
                    for (sum, &value) in sums.iter_mut().zip(&pixel.0) {
                        *sum = sum.wrapping_add(value as i32 * k);
                    }
                }
                image::Rgb(sums.map(clip8))
            })
        }
        false => image.clone(),
    };
    if h == height {
        return horizontal;
    }
    let coeffs = coefficients(h, height);
    RgbImage::from_fn(width, height, |x, y| {
        let (start, weights) = &coeffs[y as usize];
        let mut sums = [half; 3];
        for (i, &k) in weights.iter().enumerate() {
            let pixel = horizontal.get_pixel(x, *start as u32 + i as u32);
            for (sum, &value) in sums.iter_mut().zip(&pixel.0) {
                *sum = sum.wrapping_add(value as i32 * k);
            }
        }
        image::Rgb(sums.map(clip8))
    })
}

/// `image` enlarged by an upscaler model as A1111 runs one (192-pixel tiles
/// sharing 8), then resized with Pillow's Lanczos to `width` x `height` when
/// the model's scale does not land on it: hires fix and the Extras tab.
pub fn upscale_to(
    model: &sd_upscale::Upscaler,
    image: &RgbImage,
    (width, height): (u32, u32),
) -> Result<RgbImage, sd_upscale::UpscaleError> {
    let big = model.upscale_rgb(image, Some(sd_upscale::Tiling::new(192, 8)?))?;
    Ok(match big.dimensions() == (width, height) {
        true => big,
        false => resize_lanczos(&big, width, height),
    })
}
