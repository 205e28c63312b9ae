//! A deterministic judge of generated shape images: which colour, which
//! shape. The background is read from the border; the shape is the set of
//! pixels far from it; its colour is the nearest palette colour to their
//! mean, and its class comes from how much of its bounding box it fills
//! (square ~1, circle ~pi/4, triangle ~1/2).

use image::RgbImage;

use crate::shapes::{COLORS, SHAPES};

/// What a generated shapes image shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Index into [`COLORS`], or None when no shape was found.
    pub color: Option<usize>,
    /// Index into [`SHAPES`].
    pub shape: Option<usize>,
    /// Fraction of the bounding box the shape fills.
    pub fill: f64,
    /// Pixels of the shape.
    pub area: usize,
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Finds the shape, its colour and its size in a generated image.
pub fn analyze(image: &RgbImage) -> Analysis {
    let (w, h) = image.dimensions();
    let px = |x: u32, y: u32| {
        let p = image.get_pixel(x, y).0;
        [p[0] as f64, p[1] as f64, p[2] as f64]
    };
    // 1. background: the median border colour (per channel)
    let mut border: Vec<[f64; 3]> = Vec::new();
    for x in 0..w {
        border.push(px(x, 0));
        border.push(px(x, h - 1));
    }
    for y in 0..h {
        border.push(px(0, y));
        border.push(px(w - 1, y));
    }
    let median = |c: usize| {
        let mut v: Vec<f64> = border.iter().map(|p| p[c]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let background = [median(0), median(1), median(2)];
    // 2. the shape's pixels, its mean colour and bounding box
    let (mut sum, mut area) = ([0.0; 3], 0usize);
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            let p = px(x, y);
            if distance(p, background) > 80.0 {
                area += 1;
                for c in 0..3 {
                    sum[c] += p[c];
                }
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    if area < 4 {
        return Analysis {
            color: None,
            shape: None,
            fill: 0.0,
            area,
        };
    }
    let mean = [
        sum[0] / area as f64,
        sum[1] / area as f64,
        sum[2] / area as f64,
    ];
    let color = (0..COLORS.len())
        .min_by(|&a, &b| {
            let da = distance(mean, COLORS[a].1.map(f64::from));
            let db = distance(mean, COLORS[b].1.map(f64::from));
            da.total_cmp(&db)
        })
        .expect("six colours");
    let box_area = ((x1 - x0 + 1) * (y1 - y0 + 1)) as f64;
    let fill = area as f64 / box_area;
    let shape = if fill > 0.88 {
        1
    } else if fill > 0.64 {
        0
    } else {
        2
    };
    debug_assert_eq!(SHAPES[1], "square");
    Analysis {
        color: Some(color),
        shape: Some(shape),
        fill,
        area,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::ShapesDataset;

    #[test]
    fn the_analyzer_reads_the_datasets_own_images() {
        let data = ShapesDataset {
            hold_out: false,
            ..ShapesDataset::new(7, 300, 32)
        };
        let (mut colors, mut shapes) = (0, 0);
        for i in 0..data.len {
            let scene = data.scene(i);
            let a = analyze(&scene.render(32));
            colors += usize::from(a.color == Some(scene.color));
            shapes += usize::from(a.shape == Some(scene.shape));
        }
        assert!(colors >= 297, "colour right on {colors}/300");
        assert!(shapes >= 285, "shape right on {shapes}/300");
    }
}
