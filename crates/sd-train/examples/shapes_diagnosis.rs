//! Where does a shapes model read the colour from? Splices the text
//! encoder's per-token states of two captions and counts which colour the
//! model draws (docs/training.md, "Why held-out pairs failed").
//!
//! ```bash
//! cargo run --release -p sd-train --example shapes_diagnosis -- crates/sd-cli/shapes
//! ```
//!
//! Captions tokenize as `<bos> a large {colour} {shape} on a {bg} background
//! <eos> <pad>...`: the colour is token 3 and the shape token 4. Because CLIP's
//! attention is causal, token 3's state is the same whatever shape follows,
//! while token 4 and everything after it have seen both words.

use anyhow::Result;
use sd_pipeline::{PromptEmbeddings, Request, Seed, StableDiffusion};
use sd_train::analyzer::analyze;
use sd_train::shapes::{caption, ShapesDataset, BACKGROUNDS, COLORS, SHAPES};

const COLOUR_TOKEN: i64 = 3;
const SHAPE_TOKEN: i64 = 4;
/// Index of "large" in SIZES.
const LARGE: usize = 1;

/// `a`'s states with positions `from..to` taken from `b`.
fn splice(a: &PromptEmbeddings, b: &PromptEmbeddings, from: i64, to: i64) -> PromptEmbeddings {
    let mut out = a.clone();
    let hidden = a.positive.hidden.copy();
    let len = to.min(hidden.size()[1]) - from;
    hidden
        .narrow(1, from, len)
        .copy_(&b.positive.hidden.narrow(1, from, len));
    out.positive.hidden = hidden;
    out
}

/// The colour drawn (index into COLORS), if any.
fn drawn(
    pipeline: &StableDiffusion,
    embeddings: PromptEmbeddings,
    seed: u64,
) -> Result<Option<usize>> {
    let mut request = Request::new("");
    request.steps = 20;
    request.seed = Seed::Batch(seed);
    request.embeddings = Some(embeddings);
    let image = &pipeline.generate(&request)?.images[0];
    Ok(analyze(image).color)
}

fn main() -> Result<()> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or("crates/sd-cli/shapes".into());
    let seeds: u64 = std::env::args().nth(2).map_or(Ok(2), |s| s.parse())?;
    let pipeline = StableDiffusion::builder().model_dir(&model).build()?;
    let encode = |c, s, bg| -> Result<PromptEmbeddings> {
        let request = Request::new(caption(LARGE, c, s, bg));
        Ok(pipeline.encode_prompts(&request, true)?)
    };

    // 1. held-out pairs: which colour comes out
    println!("held-out pairs, colour drawn over every background and {seeds} seeds:");
    for (c, s) in (0..COLORS.len())
        .flat_map(|c| (0..SHAPES.len()).map(move |s| (c, s)))
        .filter(|&(c, s)| ShapesDataset::is_held_out(c, s))
    {
        let mut counts = vec![0usize; COLORS.len() + 1];
        for bg in 0..BACKGROUNDS.len() {
            for seed in 0..seeds {
                let colour = drawn(&pipeline, encode(c, s, bg)?, seed)?;
                counts[colour.unwrap_or(COLORS.len())] += 1;
            }
        }
        let named: Vec<String> = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, n)| format!("{} {n}", COLORS.get(i).map_or("none", |c| c.0)))
            .collect();
        println!("  {} {}: {}", COLORS[c].0, SHAPES[s], named.join(", "));
    }

    // 2. splices of two seen captions that differ only in the colour: (c, s)
    // with some positions from (c2, s). Which colour wins?
    let splices: [(&str, i64, i64); 3] = [
        ("colour token only from c2", COLOUR_TOKEN, COLOUR_TOKEN + 1),
        ("shape token only from c2", SHAPE_TOKEN, SHAPE_TOKEN + 1),
        ("every token after the shape from c2", SHAPE_TOKEN + 1, 77),
    ];
    for (name, from, to) in splices {
        let (mut first, mut second, mut total) = (0, 0, 0);
        for s in 0..SHAPES.len() {
            for c in 0..COLORS.len() {
                for c2 in (0..COLORS.len()).filter(|&c2| c2 != c) {
                    if ShapesDataset::is_held_out(c, s) || ShapesDataset::is_held_out(c2, s) {
                        continue;
                    }
                    let bg = (c + c2 + s) % BACKGROUNDS.len();
                    let spliced = splice(&encode(c, s, bg)?, &encode(c2, s, bg)?, from, to);
                    for seed in 0..seeds {
                        match drawn(&pipeline, spliced.clone(), seed)? {
                            Some(x) if x == c => first += 1,
                            Some(x) if x == c2 => second += 1,
                            _ => {}
                        }
                        total += 1;
                    }
                }
            }
        }
        println!(
            "{name}: colour of c {first}/{total}, of c2 {second}/{total}, other {}",
            total - first - second
        );
    }
    Ok(())
}
