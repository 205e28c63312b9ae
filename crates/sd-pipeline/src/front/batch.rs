//! The one batch key: what requests must agree on to run as one UNet
//! batch, for a server's queue, the Ray app and the pipeline alike.

use sd_clip::PromptOptions;
use sd_scheduler::SamplerKind;

use crate::adapters::LoraSpec;
use crate::generate::{Request, Task};

/// What requests must agree on to share one UNet batch (prompts and seeds
/// may differ). The one batch key of every frontend.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchKey {
    width: Option<u32>,
    height: Option<u32>,
    steps: usize,
    sampler: Option<SamplerKind>,
    numbers: [u64; 4],
    prompt_options: PromptOptions,
    sdxl_original_size: Option<(u32, u32)>,
    sdxl_crop_top_left: (u32, u32),
    sdxl_target_size: Option<(u32, u32)>,
    max_sequence_length: Option<usize>,
    skip_layer_guidance: Option<crate::SkipLayerGuidance>,
    loras: Vec<LoraSpec>,
}

impl BatchKey {
    /// The key of `request` with `loras` merged; `None` for what runs
    /// alone (image-to-image, inpainting, ControlNets).
    pub fn of(request: &Request, loras: &[LoraSpec]) -> Option<BatchKey> {
        let alone = request.control.is_some()
            || request.hires.is_some()
            || !request.image_prompts.is_empty();
        if !matches!(request.task, Task::TextToImage) || alone {
            return None;
        }
        Some(BatchKey {
            width: request.width,
            height: request.height,
            steps: request.steps,
            sampler: request.sampler,
            numbers: [
                request.guidance_scale,
                request.guidance_rescale,
                request.eta,
                request.true_cfg_scale,
            ]
            .map(f64::to_bits),
            prompt_options: request.prompt_options,
            sdxl_original_size: request.sdxl_original_size,
            sdxl_crop_top_left: request.sdxl_crop_top_left,
            sdxl_target_size: request.sdxl_target_size,
            max_sequence_length: request.max_sequence_length,
            skip_layer_guidance: request.skip_layer_guidance.clone(),
            loras: loras.to_vec(),
        })
    }
}
