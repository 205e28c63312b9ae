//! Which command-line option sets each field the request layer names, so
//! that a refused request is reported as `--steps: ...`.

use sd_pipeline::front::Field;
use sd_pipeline::PipelineError;

/// A refused request, reported under the command-line option that sets
/// the field the library names.
pub fn name_the_option(error: PipelineError) -> anyhow::Error {
    let PipelineError::InvalidInput { field, message } = &error else {
        return error.into();
    };
    let option = match field {
        Field::Prompt => "--prompt",
        Field::NegativePrompt => "--negative-prompt",
        Field::Steps => "--steps",
        Field::Guidance => "--guidance",
        Field::GuidanceRescale => "--guidance-rescale",
        Field::Eta => "--eta",
        Field::Seed => "--seed",
        Field::Width => "--width",
        Field::Height => "--height",
        Field::Size => "--width/--height",
        Field::BatchSize => "--num-images",
        Field::Strength => "--strength",
        Field::InitImage => "--init-image",
        Field::Mask => "--mask",
        Field::ControlImages => "--control-image",
        Field::ControlScales | Field::ControlNet => "--controlnet",
        Field::ControlWindow => "--control-start/--control-end",
        Field::Sampler | Field::SamplerSchedule => "--scheduler",
        Field::ClipSkip => "--clip-skip",
        Field::Lora => "--lora",
        Field::Embedding => "--embedding",
        Field::Model => "--model",
        Field::Dtype => "--dtype",
        Field::MaxSequenceLength => "--max-sequence-length",
        Field::SkipLayerGuidance => "--skip-layer-guidance",
        Field::T5 => "--t5",
        Field::ClipL => "--clip-l",
        Field::ClipG => "--clip-g",
        Field::Vae => "--vae",
        Field::Hires => "--hires-*",
        Field::IpAdapter => "--ip-adapter/--ip-image",
        _ => return error.into(),
    };
    anyhow::anyhow!("{option}: {message}")
}
