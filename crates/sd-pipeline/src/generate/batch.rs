//! Several requests as one UNet batch: what a server does with queued
//! txt2img requests that agree in shape. Each image keeps its own prompts
//! and its own seed; the text encoder runs per request, the UNet, sampler
//! and VAE once for all.

use crate::error::Result;
use crate::front::BatchKey;
use crate::generate::request::{PromptEmbeddings, Request, Seed};
use crate::pipeline::StableDiffusion;

/// What requests must agree on to share a batch (prompts and seeds may
/// differ): the request layer's batch key.
fn agree(a: &Request, b: &Request) -> bool {
    let key = |r| BatchKey::of(r, &[]);
    key(a).is_some() && key(a) == key(b)
}

/// One seed per image: a per-image list, or one image's batch seed.
fn image_seeds(request: &Request) -> Option<Vec<u64>> {
    match &request.seed {
        Seed::PerImage(seeds) if seeds.len() == request.num_images => Some(seeds.clone()),
        Seed::Batch(seed) if request.num_images == 1 => Some(vec![*seed]),
        _ => None,
    }
}

impl StableDiffusion {
    /// One request that makes the images of all `requests`, in order, as
    /// one UNet batch; `None` when they cannot share one: not all txt2img,
    /// disagreeing in size, steps, guidance or prompt options, a
    /// ControlNet, one generator for several images (split it into
    /// per-image seeds), or prompts of different lengths. Image `i` differs
    /// from its request run alone only by the rounding of a larger batch.
    pub fn combine_requests(&self, requests: &[Request]) -> Result<Option<Request>> {
        let Some(first) = requests.first() else {
            return Ok(None);
        };
        if requests.iter().any(|r| !agree(first, r)) {
            return Ok(None);
        }
        let Some(seeds) = requests.iter().map(image_seeds).collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let cfg = first.guidance_scale > 1.0;
        let mut per_image = Vec::new();
        for request in requests {
            let embeddings = match &request.embeddings {
                Some(e) if e.positive.hidden.size()[0] == 1 => e.clone(),
                Some(_) => return Ok(None),
                None => self.encode_prompts(request, cfg)?,
            };
            per_image.extend(std::iter::repeat_n(embeddings, request.num_images));
        }
        let Some(embeddings) = PromptEmbeddings::per_image(&per_image) else {
            return Ok(None);
        };
        let seeds: Vec<u64> = seeds.into_iter().flatten().collect();
        let mut combined = first.clone();
        combined.num_images = seeds.len();
        combined.seed = Seed::PerImage(seeds);
        combined.embeddings = Some(embeddings);
        Ok(Some(combined))
    }
}
