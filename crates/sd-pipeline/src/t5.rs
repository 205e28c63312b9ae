//! SD3's T5 in the pipeline: held in memory, or (low-memory pipelines)
//! read from its files a block at a time on each encoding.

use std::path::{Path, PathBuf};

use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_t5::{StreamedT5, T5Config, T5EncoderModel, T5Error, T5Keys, T5Tokenizer};
use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};

/// SD3's T5 tokenizer with its encoder.
pub type T5Tower = (T5Tokenizer, T5Encoder);

/// How SD3's T5 encoder is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum T5Loading {
    /// Left out: zeros in its place.
    Skip,
    /// In memory, like every other component.
    Resident,
    /// Read from its files a block at a time on each encoding (low-memory
    /// pipelines): at most one block of it in memory.
    Streamed,
}

/// SD3's T5 encoder, in memory or read from its files as it runs.
#[derive(Debug)]
#[non_exhaustive]
pub enum T5Encoder {
    /// Held in memory.
    Resident(Frozen<T5EncoderModel>),
    /// Read a block at a time (see [`T5Loading::Streamed`]).
    Streamed(StreamedT5),
}

impl T5Encoder {
    /// The hidden states of `input_ids` (batch, tokens).
    pub fn forward(&self, input_ids: &Tensor) -> std::result::Result<Tensor, T5Error> {
        match self {
            T5Encoder::Resident(model) => model.forward(input_ids),
            T5Encoder::Streamed(model) => model.forward(input_ids),
        }
    }

    /// The hidden states of each input (a prompt and its negative), each on
    /// its own; a streamed encoder reads its weights once for all of them.
    pub fn forward_each(&self, input_ids: &[Tensor]) -> std::result::Result<Vec<Tensor>, T5Error> {
        match self {
            T5Encoder::Resident(model) => input_ids.iter().map(|ids| model.forward(ids)).collect(),
            T5Encoder::Streamed(model) => model.forward_each(input_ids),
        }
    }

    /// The width of its states (`d_model`).
    pub fn width(&self) -> i64 {
        match self {
            T5Encoder::Resident(model) => model.config().d_model,
            T5Encoder::Streamed(model) => model.config().d_model,
        }
    }

    /// The model, when it is held in memory.
    pub fn resident(&self) -> Option<&T5EncoderModel> {
        match self {
            T5Encoder::Resident(model) => Some(model),
            T5Encoder::Streamed(_) => None,
        }
    }

    /// T5 of `config` from `files` (keys named as `keys` says), as
    /// `loading` asks.
    pub(crate) fn load(
        loading: T5Loading,
        config: &T5Config,
        files: Vec<PathBuf>,
        keys: T5Keys,
        (device, dtype): (Device, Kind),
    ) -> std::result::Result<Option<Self>, T5Error> {
        Ok(match loading {
            T5Loading::Skip => None,
            T5Loading::Resident => {
                let map = |k: &str| keys.map(k);
                let model = T5EncoderModel::from_files(config, &files, device, dtype, &map)?;
                Some(T5Encoder::Resident(Frozen::new(model)))
            }
            T5Loading::Streamed => Some(T5Encoder::Streamed(StreamedT5::new(
                config, files, keys, device, dtype,
            )?)),
        })
    }
}

/// `tokenizer{suffix}/` and `text_encoder{suffix}/` of the folder `dir`
/// (`_3` in SD3's, `_2` in FLUX's) as `loading` asks, named in errors by
/// the folder that failed; the encoder's weights from `file` when given
/// (its config from the folder when it has one, else SD3.5's T5-XXL's).
pub(crate) fn load_t5(
    (dir, suffix): (&Path, &str),
    loading: T5Loading,
    (device, dtype): (Device, Kind),
    variant: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<T5Tower>> {
    if loading == T5Loading::Skip {
        return Ok(None);
    }
    let named = |path: PathBuf| move |e: T5Error| PipelineError::model(&path, e.to_string());
    let tokenizer_dir = dir.join(format!("tokenizer{suffix}"));
    let tokenizer = T5Tokenizer::from_folder(&tokenizer_dir).map_err(named(tokenizer_dir))?;
    let folder = dir.join(format!("text_encoder{suffix}"));
    let config_file = folder.join("config.json");
    let config = match (file, config_file.is_file()) {
        (Some(file), false) => T5Config::parse(&preset_config(), file),
        _ => T5Config::from_file(&config_file),
    }
    .map_err(named(folder.clone()))?;
    let (files, keys) = match file {
        Some(file) => (
            vec![file.to_path_buf()],
            crate::encoder_files::t5_keys(file)?,
        ),
        None => (
            sd_core::weights::component_files(&folder, T5EncoderModel::WEIGHTS_STEM, variant)?,
            T5Keys::Transformers,
        ),
    };
    let weights = files[0].clone();
    let encoder =
        T5Encoder::load(loading, &config, files, keys, (device, dtype)).map_err(named(weights))?;
    Ok(encoder.map(|e| (tokenizer, e)))
}

/// T5-XXL's config as SD3.5 ships it (the embedded preset).
pub(crate) fn preset_config() -> String {
    let preset: serde_json::Value = serde_json::from_str(include_str!("presets/sd35.json"))
        .expect("the embedded preset is valid JSON");
    preset["text_encoder_3"].to_string()
}
