//! Prompt adherence of a shapes model: generate, analyse, count.

use sd_pipeline::{Request, Seed, StableDiffusion};

use crate::analyzer::analyze;
use crate::error::Result;
use crate::shapes::{ShapesDataset, BACKGROUNDS, COLORS, SHAPES, SIZES};

/// Accuracy on seen and on held-out colour-shape pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Images of colour/shape pairs seen in training.
    pub seen: usize,
    /// Of those, images with the right colour.
    pub seen_color: usize,
    /// Of those, images with the right shape.
    pub seen_shape: usize,
    /// Images of held-out colour/shape pairs.
    pub unseen: usize,
    /// Of those, images with the right colour.
    pub unseen_color: usize,
    /// Of those, images with the right shape.
    pub unseen_shape: usize,
}

impl Report {
    /// Right colours among seen pairs.
    pub fn seen_color_accuracy(&self) -> f64 {
        self.seen_color as f64 / self.seen.max(1) as f64
    }
    /// Right shapes among seen pairs.
    pub fn seen_shape_accuracy(&self) -> f64 {
        self.seen_shape as f64 / self.seen.max(1) as f64
    }
    /// Right colours among held-out pairs.
    pub fn unseen_color_accuracy(&self) -> f64 {
        self.unseen_color as f64 / self.unseen.max(1) as f64
    }
    /// Right shapes among held-out pairs.
    pub fn unseen_shape_accuracy(&self) -> f64 {
        self.unseen_shape as f64 / self.unseen.max(1) as f64
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seen pairs: colour {:.1}%, shape {:.1}% of {}; held-out pairs: colour {:.1}%, shape {:.1}% of {}",
            100.0 * self.seen_color_accuracy(),
            100.0 * self.seen_shape_accuracy(),
            self.seen,
            100.0 * self.unseen_color_accuracy(),
            100.0 * self.unseen_shape_accuracy(),
            self.unseen
        )
    }
}

/// The fixed prompt set: every colour x shape, large, on each background in
/// turn (so 18 prompts, 3 of them held-out pairs), `seeds` images each.
pub fn evaluate(
    pipeline: &StableDiffusion,
    seeds: u64,
    steps: usize,
    guidance: f64,
) -> Result<Report> {
    let mut report = Report::default();
    for (c, (color, _)) in COLORS.iter().enumerate() {
        for (s, shape) in SHAPES.iter().enumerate() {
            let background = BACKGROUNDS[(c + s) % BACKGROUNDS.len()].0;
            let prompt = format!(
                "a {} {color} {shape} on a {background} background",
                SIZES[1]
            );
            for seed in 0..seeds {
                let mut request = Request::new(&prompt);
                request.steps = steps;
                request.guidance_scale = guidance;
                request.seed = Seed::Batch(seed);
                let image = &pipeline.generate(&request)?.images[0];
                let a = analyze(image);
                let (good_color, good_shape) = (a.color == Some(c), a.shape == Some(s));
                if ShapesDataset::is_held_out(c, s) {
                    report.unseen += 1;
                    report.unseen_color += usize::from(good_color);
                    report.unseen_shape += usize::from(good_shape);
                } else {
                    report.seen += 1;
                    report.seen_color += usize::from(good_color);
                    report.seen_shape += usize::from(good_shape);
                }
            }
        }
    }
    Ok(report)
}
