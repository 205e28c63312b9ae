//! Tiled encode/decode for large images in bounded memory: overlapping
//! tiles, each blended linearly into its top and left neighbours, exactly
//! as diffusers' `tiled_encode` / `tiled_decode`.

use tch::Tensor;

/// Tile sizes on both sides of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileOptions {
    /// Edge of an image tile in pixels (diffusers: the config's sample_size).
    pub sample_size: i64,
    /// Fraction of a tile shared with its neighbour (0.25).
    pub overlap: f64,
}

/// Runs `f` on overlapping tiles of `input` and stitches the outputs.
/// `in_tile` is the tile edge on the input side, `out_tile` on the output side.
pub fn tiled(
    input: &Tensor,
    in_tile: i64,
    out_tile: i64,
    overlap: f64,
    f: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let stride = (in_tile as f64 * (1.0 - overlap)) as i64;
    let blend = (out_tile as f64 * overlap) as i64;
    let keep = out_tile - blend;
    let (_, _, h, w) = input.size4().expect("a 4-d input");
    let starts = |size: i64| {
        (0..size)
            .step_by(stride.max(1) as usize)
            .collect::<Vec<_>>()
    };
    let (rows_at, cols_at) = (starts(h), starts(w));
    // 1. every tile through the model
    let mut rows: Vec<Vec<Tensor>> = rows_at
        .iter()
        .map(|&i| {
            cols_at
                .iter()
                .map(|&j| {
                    let tile =
                        input
                            .narrow(2, i, in_tile.min(h - i))
                            .narrow(3, j, in_tile.min(w - j));
                    f(&tile)
                })
                .collect()
        })
        .collect();
    // 2. blend each tile into its (already blended) top and left neighbours, crop, stitch
    let mut out_rows = Vec::new();
    for i in 0..rows.len() {
        let mut out_row = Vec::new();
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].shallow_clone();
            if i > 0 {
                tile = blend_into(&rows[i - 1][j], &tile, blend, 2);
            }
            if j > 0 {
                tile = blend_into(&rows[i][j - 1], &tile, blend, 3);
            }
            rows[i][j] = tile.shallow_clone();
            let (th, tw) = (tile.size()[2], tile.size()[3]);
            out_row.push(tile.narrow(2, 0, keep.min(th)).narrow(3, 0, keep.min(tw)));
        }
        out_rows.push(Tensor::cat(&out_row, 3));
    }
    Tensor::cat(&out_rows, 2)
}

/// The first `extent` rows (dim 2) or columns (dim 3) of `b` fade in from
/// the last `extent` of `a`: b = a * (1 - k/extent) + b * (k/extent).
fn blend_into(a: &Tensor, b: &Tensor, extent: i64, dim: i64) -> Tensor {
    let extent = extent
        .min(a.size()[dim as usize])
        .min(b.size()[dim as usize]);
    if extent <= 0 {
        return b.shallow_clone();
    }
    let k: Vec<f32> = (0..extent)
        .map(|y| (y as f64 / extent as f64) as f32)
        .collect();
    let one_minus: Vec<f32> = (0..extent)
        .map(|y| (1.0 - y as f64 / extent as f64) as f32)
        .collect();
    let shape: Vec<i64> = if dim == 2 {
        vec![1, 1, extent, 1]
    } else {
        vec![1, 1, 1, extent]
    };
    let to = |v: &[f32]| {
        Tensor::from_slice(v)
            .view(shape.as_slice())
            .to_device(b.device())
            .to_kind(b.kind())
    };
    let (k, one_minus) = (to(&k), to(&one_minus));
    let a_len = a.size()[dim as usize];
    let head = a.narrow(dim, a_len - extent, extent) * one_minus + b.narrow(dim, 0, extent) * k;
    let rest = b.size()[dim as usize] - extent;
    if rest == 0 {
        head
    } else {
        Tensor::cat(&[head, b.narrow(dim, extent, rest)], dim)
    }
}
