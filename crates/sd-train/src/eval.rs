//! Prompt adherence of a shapes model: generate, analyse, count.

use sd_pipeline::{Request, Seed, StableDiffusion};

use crate::analyzer::analyze;
use crate::error::Result;
use crate::shapes::{caption, ShapesDataset, BACKGROUNDS, COLORS, SHAPES};

/// Index of "large" in [`crate::shapes::SIZES`]: every prompt asks for a large shape.
const LARGE: usize = 1;

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
    /// Each held-out pair on its own: (caption words, images, right
    /// colours, right shapes).
    pub held_out_pairs: Vec<(String, usize, usize, usize)>,
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
        )?;
        for (pair, n, color, shape) in &self.held_out_pairs {
            write!(f, "\n  {pair}: colour {color}/{n}, shape {shape}/{n}")?;
        }
        Ok(())
    }
}

/// The fixed prompt set: every colour x shape (large) on every background,
/// `seeds` images each: 54 prompts, 9 of them held-out pairs.
pub fn evaluate(
    pipeline: &StableDiffusion,
    seeds: u64,
    steps: usize,
    guidance: f64,
) -> Result<Report> {
    let mut report = Report::default();
    if seeds == 0 {
        return Ok(report);
    }
    for (c, (color, _)) in COLORS.iter().enumerate() {
        for (s, shape) in SHAPES.iter().enumerate() {
            let held_out = ShapesDataset::is_held_out(c, s);
            let (mut n, mut good_colors, mut good_shapes) = (0, 0, 0);
            for background in 0..BACKGROUNDS.len() {
                // The seeds of one prompt as one batch, one generator per
                // image: the noise of `--seed 0`, `--seed 1`, ... run alone.
                let mut request = Request::new(caption(LARGE, c, s, background));
                request.steps = steps;
                request.guidance_scale = guidance;
                request.num_images = seeds as usize;
                request.seed = Seed::PerImage((0..seeds).collect());
                for image in &pipeline.generate(&request)?.images {
                    let a = analyze(image);
                    n += 1;
                    good_colors += usize::from(a.color == Some(c));
                    good_shapes += usize::from(a.shape == Some(s));
                }
            }
            if held_out {
                report.unseen += n;
                report.unseen_color += good_colors;
                report.unseen_shape += good_shapes;
                report.held_out_pairs.push((
                    format!("{color} {shape}"),
                    n,
                    good_colors,
                    good_shapes,
                ));
            } else {
                report.seen += n;
                report.seen_color += good_colors;
                report.seen_shape += good_shapes;
            }
        }
    }
    Ok(report)
}
