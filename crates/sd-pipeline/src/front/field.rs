//! The request fields a bad-input error names. Each frontend maps them to
//! its own syntax once (`Field::Guidance` is `--guidance` on the command
//! line, `cfg_scale` in AUTOMATIC1111's API), so renaming a field is a
//! compile error there, not a silently lost option name.

/// A field of a [`Request`](crate::Request), a [`Parameters`](crate::front::Parameters)
/// or a builder option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// The prompt (and its `<lora:…>` tags).
    Prompt,
    /// The negative prompt.
    NegativePrompt,
    /// Precomputed prompt embeddings.
    Embeddings,
    /// Denoising steps.
    Steps,
    /// Classifier-free guidance scale.
    Guidance,
    /// diffusers' guidance_rescale.
    GuidanceRescale,
    /// DDIM's eta.
    Eta,
    /// The seed or seeds.
    Seed,
    /// Output width.
    Width,
    /// Output height.
    Height,
    /// Width and height together (memory, aspect).
    Size,
    /// Images per run (one UNet batch).
    BatchSize,
    /// Runs one after another.
    Iterations,
    /// Image-to-image and inpainting strength.
    Strength,
    /// The init image.
    InitImage,
    /// The inpainting mask.
    Mask,
    /// Control images for the loaded ControlNets.
    ControlImages,
    /// ControlNet conditioning scales.
    ControlScales,
    /// ControlNet guidance start and end.
    ControlWindow,
    /// The sampler's name.
    Sampler,
    /// The sampler's sigma schedule (A1111's `scheduler`: Karras).
    SamplerSchedule,
    /// Text-encoder layers skipped.
    ClipSkip,
    /// A LoRA file or scale.
    Lora,
    /// A textual-inversion embedding file.
    Embedding,
    /// A ControlNet model.
    ControlNet,
    /// The model source.
    Model,
    /// The weights' dtype.
    Dtype,
    /// The final latents (array input).
    Latents,
    /// An image given to a preprocessor, or decoded.
    Image,
    /// A preprocessor's thresholds.
    Thresholds,
    /// An encoded output file (PNG).
    Output,
    /// SD3: T5's token count.
    MaxSequenceLength,
    /// SD3.5: skip-layer guidance (layers, scale, window).
    SkipLayerGuidance,
    /// SD3: the T5 encoder (loaded, left out, or from a file of its own).
    T5,
    /// CLIP-L from a file of its own.
    ClipL,
    /// CLIP-G from a file of its own.
    ClipG,
    /// The VAE from a file of its own.
    Vae,
    /// Extras: the upscaler by name.
    Upscaler,
    /// Extras: the factor or size of the result.
    UpscalingResize,
    /// Extras: by factor or to a size.
    ResizeMode,
    /// Hires fix (its size, upscaler, steps or strength).
    Hires,
    /// IP-Adapter image prompts (their count, images or scales).
    IpAdapter,
}

impl Field {
    /// The library's name: the `Request` / `Parameters` field or builder
    /// option, snake_case.
    pub fn name(self) -> &'static str {
        match self {
            Field::Prompt => "prompt",
            Field::NegativePrompt => "negative_prompt",
            Field::Embeddings => "embeddings",
            Field::Steps => "steps",
            Field::Guidance => "guidance_scale",
            Field::GuidanceRescale => "guidance_rescale",
            Field::Eta => "eta",
            Field::Seed => "seed",
            Field::Width => "width",
            Field::Height => "height",
            Field::Size => "size",
            Field::BatchSize => "num_images",
            Field::Iterations => "n_iter",
            Field::Strength => "strength",
            Field::InitImage => "init_image",
            Field::Mask => "mask",
            Field::ControlImages => "control_images",
            Field::ControlScales => "control_scales",
            Field::ControlWindow => "control_window",
            Field::Sampler => "sampler",
            Field::SamplerSchedule => "sampler_schedule",
            Field::ClipSkip => "clip_skip",
            Field::Lora => "lora",
            Field::Embedding => "embedding",
            Field::ControlNet => "controlnet",
            Field::Model => "model",
            Field::Dtype => "dtype",
            Field::Latents => "latents",
            Field::Image => "image",
            Field::Thresholds => "thresholds",
            Field::Output => "output",
            Field::MaxSequenceLength => "max_sequence_length",
            Field::SkipLayerGuidance => "skip_layer_guidance",
            Field::T5 => "t5",
            Field::ClipL => "clip_l",
            Field::ClipG => "clip_g",
            Field::Vae => "vae",
            Field::Upscaler => "upscaler_1",
            Field::UpscalingResize => "upscaling_resize",
            Field::ResizeMode => "resize_mode",
            Field::Hires => "hires",
            Field::IpAdapter => "ip_adapter",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
