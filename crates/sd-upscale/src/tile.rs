//! Running a model over an image in overlapping tiles, so that a large
//! result needs only one tile's activations at a time. Tiles of `size`
//! input pixels start every `size - overlap` pixels (the last one flush
//! with the edge); each output tile is weighted by a linear ramp across the
//! overlap it shares with a neighbour, `(j + 1) / (overlap * scale + 1)`, and the
//! weighted sum is divided by the summed weights, in f32. A tile sees less
//! context than the whole image, so tiled and untiled results differ near
//! the seams (docs/upscale.md gives the bound).

use tch::{Kind, Tensor};

use crate::error::{Result, UpscaleError};

/// How to tile: `size` input pixels a side, `overlap` shared with each
/// neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tiling {
    /// Tile side in input pixels.
    pub size: i64,
    /// Input pixels shared by neighbouring tiles.
    pub overlap: i64,
}

impl Tiling {
    /// Tiles of `size` sharing `overlap` pixels; refused when the overlap
    /// leaves no step.
    pub fn new(size: i64, overlap: i64) -> Result<Self> {
        if size < 8 || overlap < 0 || overlap >= size / 2 {
            return Err(UpscaleError::Input(format!(
                "tile {size} with overlap {overlap}: tiles of at least 8 pixels, overlap under half"
            )));
        }
        Ok(Tiling { size, overlap })
    }

    /// Where tiles start along an axis of `length` pixels.
    pub fn starts(&self, length: i64) -> Vec<i64> {
        if length <= self.size {
            return vec![0];
        }
        let step = self.size - self.overlap;
        let mut starts: Vec<i64> = (0..)
            .map(|i| i * step)
            .take_while(|&s| s + self.size < length)
            .collect();
        starts.push(length - self.size);
        starts
    }
}

/// The weights of one tile's output along an axis of `n` pixels: a ramp over
/// `ramp` pixels at each end that has a neighbour.
fn ramp(n: i64, ramp: i64, before: bool, after: bool) -> Tensor {
    let values: Vec<f32> = (0..n)
        .map(|j| {
            let rise = |k: i64| ((k + 1) as f64 / (ramp + 1) as f64).min(1.0);
            let mut w = 1.0f64;
            if before {
                w = w.min(rise(j));
            }
            if after {
                w = w.min(rise(n - 1 - j));
            }
            w as f32
        })
        .collect();
    Tensor::from_slice(&values)
}

/// `model` over `image` (batch, channels, height, width) in tiles; `scale`
/// is the model's factor. The result is f32.
pub fn run_tiled(
    image: &Tensor,
    scale: i64,
    tiling: Tiling,
    model: &dyn Fn(&Tensor) -> Tensor,
) -> Result<Tensor> {
    let (b, _, h, w) = image.size4()?;
    let (ys, xs) = (tiling.starts(h), tiling.starts(w));
    // The sums live where the model's outputs do: the image may stay on
    // the host while each tile goes to the device.
    let mut sums: Option<(Tensor, Tensor)> = None;
    for (iy, &y) in ys.iter().enumerate() {
        for (ix, &x) in xs.iter().enumerate() {
            let (th, tw) = (tiling.size.min(h), tiling.size.min(w));
            let tile = image.narrow(2, y, th).narrow(3, x, tw);
            let out = model(&tile).to_kind(Kind::Float);
            let device = out.device();
            let overlap = tiling.overlap * scale;
            let wy = ramp(th * scale, overlap, iy > 0, iy + 1 < ys.len());
            let wx = ramp(tw * scale, overlap, ix > 0, ix + 1 < xs.len());
            let weight = (wy.unsqueeze(1) * wx.unsqueeze(0)).to_device(device);
            let (total, weights) = sums.get_or_insert_with(|| {
                let options = (Kind::Float, device);
                let total = Tensor::zeros([b, out.size()[1], h * scale, w * scale], options);
                (total, Tensor::zeros([1, 1, h * scale, w * scale], options))
            });
            let region = |t: &Tensor| {
                t.narrow(2, y * scale, th * scale)
                    .narrow(3, x * scale, tw * scale)
            };
            let _ = region(total).f_add_(&(&out * &weight))?;
            let _ = region(weights).f_add_(&weight)?;
        }
    }
    let (total, weights) = sums.ok_or_else(|| UpscaleError::Input("an empty image".into()))?;
    Ok(total / weights)
}
