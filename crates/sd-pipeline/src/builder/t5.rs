//! The builder's T5 options: whether T5 is loaded, held or streamed, and
//! the checks that it was asked of a model that has one.

use super::StableDiffusionBuilder;
use crate::components::Components;
use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::model::ModelFamily;
use crate::t5::T5Loading;

impl StableDiffusionBuilder {
    /// T5 left out, held, or (low-memory pipelines) read a block at a time.
    pub(super) fn t5_loading(&self) -> T5Loading {
        match (self.t5_wanted(), self.low_memory) {
            (Some(false), _) => T5Loading::Skip,
            (_, true) => T5Loading::Streamed,
            (_, false) => T5Loading::Resident,
        }
    }

    /// T5 asked for (`.t5(true)`) but not there, or asked of a model that
    /// takes none.
    pub(super) fn check_t5(&self, components: &Components) -> Result<()> {
        let family = components.index.family;
        if family == ModelFamily::StableDiffusion && self.encoder_files.clip_g.is_some() {
            return Err(PipelineError::request(
                Field::Model,
                "a CLIP-G file was given, but this SD1/SD2 model has one text encoder",
            ));
        }
        let sd3 = family.is_flow_matching();
        components.check_text_widths()?;
        let message = match (self.t5_wanted(), sd3, components.t5.is_some()) {
            (Some(true), true, false) => format!(
                "T5 was asked for, but {} has none (no text_encoder_3/; a single file without \
                 text_encoders.t5xxl.* and no config_dir with one)",
                components.source.display()
            ),
            (Some(_), false, _) => "T5 is SD3's third text encoder; this model has none".into(),
            _ => return Ok(()),
        };
        Err(PipelineError::request(Field::T5, message))
    }

    /// `.t5(..)` as set, a T5 file counting as `true`.
    fn t5_wanted(&self) -> Option<bool> {
        match self.encoder_files.t5 {
            Some(_) => Some(true),
            None => self.t5,
        }
    }
}
