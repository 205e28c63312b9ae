//! A procedural dataset that needs no download: one coloured shape on a
//! plain background, captioned "a {size} {color} {shape} on a {background}
//! background". Everything follows from (seed, index).

use image::{Rgb, RgbImage};

use crate::dataset::{Dataset, Sample};
use crate::error::Result;

/// Shape sizes, as captions name them.
pub const SIZES: [&str; 2] = ["small", "large"];
/// Shape colours: caption word and RGB.
pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 50]),
    ("blue", [30, 60, 220]),
    ("yellow", [235, 210, 30]),
    ("purple", [140, 40, 170]),
    ("orange", [245, 130, 20]),
];
/// Shapes, as captions name them.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Backgrounds: caption word and RGB.
pub const BACKGROUNDS: [(&str, [u8; 3]); 3] = [
    ("white", [245, 245, 245]),
    ("black", [15, 15, 15]),
    ("gray", [128, 128, 128]),
];

/// Colour–shape pairs never shown in training (the generalisation test).
pub const HELD_OUT: [(&str, &str); 3] = [
    ("purple", "triangle"),
    ("orange", "circle"),
    ("green", "square"),
];

/// The caption grammar, from indices into [`SIZES`], [`COLORS`], [`SHAPES`]
/// and [`BACKGROUNDS`]: "a {size} {color} {shape} on a {background} background".
pub fn caption(size: usize, color: usize, shape: usize, background: usize) -> String {
    format!(
        "a {} {} {} on a {} background",
        SIZES[size], COLORS[color].0, SHAPES[shape], BACKGROUNDS[background].0
    )
}

/// One drawable scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// Index into [`SIZES`].
    pub size: usize,
    /// Index into [`COLORS`].
    pub color: usize,
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// Index into [`BACKGROUNDS`].
    pub background: usize,
    /// Centre in [0, 1] image coordinates.
    pub center: (f64, f64),
    /// Half-extent in [0, 1] image units.
    pub radius: f64,
}

impl Scene {
    /// "a {size} {color} {shape} on a {background} background".
    pub fn caption(&self) -> String {
        caption(self.size, self.color, self.shape, self.background)
    }

    /// Renders at `side` pixels, 4x4 supersampled edges.
    pub fn render(&self, side: u32) -> RgbImage {
        let bg = BACKGROUNDS[self.background].1;
        let fg = COLORS[self.color].1;
        RgbImage::from_fn(side, side, |x, y| {
            let mut inside = 0.0;
            for sy in 0..4 {
                for sx in 0..4 {
                    let px = (x as f64 + (sx as f64 + 0.5) / 4.0) / side as f64;
                    let py = (y as f64 + (sy as f64 + 0.5) / 4.0) / side as f64;
                    if self.contains(px, py) {
                        inside += 1.0 / 16.0;
                    }
                }
            }
            let mix =
                |c: usize| (fg[c] as f64 * inside + bg[c] as f64 * (1.0 - inside)).round() as u8;
            Rgb([mix(0), mix(1), mix(2)])
        })
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.center.0, y - self.center.1);
        let r = self.radius;
        match SHAPES[self.shape] {
            "circle" => dx * dx + dy * dy <= r * r,
            "square" => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
            _ => {
                // Upright isosceles triangle in the box [-r, r]^2.
                let t = (dy + r) / (2.0 * r);
                (0.0..=1.0).contains(&t) && dx.abs() <= t * r
            }
        }
    }
}

/// A small deterministic generator (SplitMix64), so scenes do not depend on
/// any library's random stream.
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A uniform float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The shapes dataset: `len` scenes of `side` pixels from `seed`.
#[derive(Debug, Clone)]
pub struct ShapesDataset {
    /// The seed every sample derives from.
    pub seed: u64,
    /// Samples in the dataset.
    pub len: usize,
    /// Image side in pixels.
    pub side: u32,
    /// Leave the [`HELD_OUT`] pairs out.
    pub hold_out: bool,
}

impl ShapesDataset {
    /// `len` images of `side` pixels, all derived from `seed`.
    pub fn new(seed: u64, len: usize, side: u32) -> Self {
        ShapesDataset {
            seed,
            len,
            side,
            hold_out: true,
        }
    }

    /// Whether this colour/shape pair is kept out of training (to measure generalisation).
    pub fn is_held_out(color: usize, shape: usize) -> bool {
        HELD_OUT.contains(&(COLORS[color].0, SHAPES[shape]))
    }

    /// The scene at `index` (held-out pairs are redrawn).
    pub fn scene(&self, index: usize) -> Scene {
        let mut rng = SplitMix::new(self.seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        loop {
            let (size, color, shape, background) =
                (rng.below(2), rng.below(6), rng.below(3), rng.below(3));
            if self.hold_out && Self::is_held_out(color, shape) {
                continue;
            }
            let radius = if size == 0 {
                0.16 + 0.04 * rng.unit()
            } else {
                0.30 + 0.06 * rng.unit()
            };
            let margin = radius + 0.02;
            let center = (
                margin + (1.0 - 2.0 * margin) * rng.unit(),
                margin + (1.0 - 2.0 * margin) * rng.unit(),
            );
            return Scene {
                size,
                color,
                shape,
                background,
                center,
                radius,
            };
        }
    }
}

impl Dataset for ShapesDataset {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let scene = self.scene(index);
        Ok(Sample {
            image: scene.render(self.side),
            caption: scene.caption(),
        })
    }
}
