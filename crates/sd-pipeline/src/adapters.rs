//! LoRAs and textual-inversion embeddings on a loaded pipeline.
//!
//! LoRAs are merged into the UNet's and text encoders' weights (no cost
//! per step) and can be swapped or removed without reloading: the
//! originals of the touched weights are kept (see `sd_lora::merge`).
//! Embeddings add tokens to the tokenizers and rows to the text encoders.

use std::path::{Path, PathBuf};

use sd_core::shared::Frozen;
use sd_core::weights::KeyMap;
use sd_core::DiffusersModel;
use sd_lora::{ApplyReport, Component, EmbeddingFile, LoraFile, Merged, Target, Targets};
use sd_unet::ldm::LdmUNetKeys;

use crate::denoiser::Denoiser;
use crate::error::{PipelineError, Result};
use crate::front::Field;
use crate::pipeline::StableDiffusion;

/// A LoRA file and the scale to merge it at (1.0 is the file's own
/// strength; A1111's `<lora:name:0.8>` is 0.8).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The `.safetensors` file.
    pub path: PathBuf,
    /// Multiplies the file's `alpha / rank`.
    pub scale: f64,
}

impl LoraSpec {
    /// `path` at `scale`.
    pub fn new(path: impl Into<PathBuf>, scale: f64) -> Self {
        LoraSpec {
            path: path.into(),
            scale,
        }
    }
}

/// The merged LoRAs: the originals of the weights they changed, the
/// files in order, and what merging each did.
pub(crate) struct Adapters {
    merged: Frozen<Merged>,
    loras: Vec<LoraSpec>,
    reports: Vec<ApplyReport>,
}

impl Default for Adapters {
    fn default() -> Self {
        Adapters {
            merged: Frozen::new(Merged::new()),
            loras: Vec::new(),
            reports: Vec::new(),
        }
    }
}

impl StableDiffusion {
    /// The models adapters may change, indexed by every name files use.
    fn adapter_targets(&self) -> Result<Targets> {
        let denoiser = match &self.denoiser {
            Denoiser::UNet(unet) => {
                let store = unet.var_store();
                // SDXL files from kohya name the UNet's modules the LDM way.
                let ldm = LdmUNetKeys::new(unet.config())?;
                let aliases = store
                    .variables()
                    .keys()
                    .filter_map(|name| {
                        name.strip_suffix(".weight")?;
                        let alias = ldm.to_ldm(name)?;
                        Some((
                            alias.strip_suffix(".weight")?.to_string(),
                            KeyMap::To(name.clone()),
                        ))
                    })
                    .collect();
                Target {
                    component: Component::Unet,
                    store,
                    aliases,
                }
            }
            // kohya's SD3 files name the transformer's modules Stability's
            // way (q/k/v fused)
            Denoiser::Transformer(transformer) => Target {
                component: Component::Transformer,
                store: transformer.var_store(),
                aliases: sd_mmdit::sai::linear_modules(transformer.config().num_layers),
            },
            // (other tools' FLUX LoRAs are rewritten in diffusers' names as
            // the file is read: sd_lora's flux module)
            Denoiser::Flux(transformer) => Target {
                component: Component::Transformer,
                store: transformer.var_store(),
                aliases: vec![],
            },
        };
        let mut targets = vec![
            denoiser,
            Target {
                component: Component::TextEncoder,
                store: self.text.1.var_store(),
                aliases: vec![],
            },
        ];
        if let Some((_, encoder)) = &self.text_2 {
            targets.push(Target {
                component: Component::TextEncoder2,
                store: encoder.var_store(),
                aliases: vec![],
            });
        }
        Ok(Targets::new(targets))
    }

    /// Replaces the merged LoRAs by `loras`, each merged at its scale in
    /// order (an empty list leaves the base model). One report per file:
    /// modules merged and keys skipped with why. On an error the model is
    /// left as the base model, with no LoRA.
    pub fn set_loras(&mut self, loras: &[LoraSpec]) -> Result<Vec<ApplyReport>> {
        let files = loras
            .iter()
            .map(|spec| LoraFile::open(&spec.path))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let targets = self.adapter_targets()?;
        let adapters = &mut self.adapters;
        let merged = adapters.merged.get_mut();
        merged.restore(&targets)?;
        adapters.loras.clear();
        adapters.reports.clear();
        let mut reports = Vec::new();
        for (file, spec) in files.iter().zip(loras) {
            match merged.apply(file, spec.scale, &targets) {
                Ok(report) => reports.push(report),
                Err(e) => {
                    merged.restore(&targets)?;
                    return Err(e.into());
                }
            }
        }
        adapters.loras = loras.to_vec();
        adapters.reports = reports.clone();
        Ok(reports)
    }

    /// Merges one more LoRA on top of those already merged.
    pub fn add_lora(&mut self, spec: LoraSpec) -> Result<ApplyReport> {
        let mut all = self.adapters.loras.clone();
        all.push(spec);
        let mut reports = self.set_loras(&all)?;
        reports
            .pop()
            .ok_or_else(|| PipelineError::request(Field::Lora, "nothing merged"))
    }

    /// Takes every LoRA out: the weights are the base model's again, bit
    /// for bit.
    pub fn unload_loras(&mut self) -> Result<()> {
        self.set_loras(&[]).map(drop)
    }

    /// What merging each LoRA of [`loras`](Self::loras) did (modules
    /// merged, keys skipped and why): also for those the builder merged.
    pub fn lora_reports(&self) -> &[ApplyReport] {
        &self.adapters.reports
    }

    /// The LoRAs merged now, in order.
    pub fn loras(&self) -> &[LoraSpec] {
        &self.adapters.loras
    }

    /// Bytes held to undo the merged LoRAs (one copy of each touched weight).
    pub fn lora_undo_bytes(&self) -> usize {
        self.adapters.merged.saved_bytes()
    }

    /// Loads a textual-inversion embedding; `token` replaces the file's
    /// own (its key, or its file stem). Returns the tokens added (`t`,
    /// `t_1`, ...); prompts use `t`. SDXL needs a file with vectors for
    /// both text encoders (`clip_l`, `clip_g`).
    pub fn load_embedding(
        &mut self,
        path: impl AsRef<Path>,
        token: Option<&str>,
    ) -> Result<Vec<String>> {
        let file = EmbeddingFile::open(path.as_ref(), token)?;
        let tokens = file.tokens();
        let second = match (&self.text_2, &file.vectors_2) {
            (Some(_), None) => {
                return Err(PipelineError::model(
                    path.as_ref(),
                    "SDXL needs vectors for both text encoders ('clip_l' and 'clip_g'); this file has one set",
                ))
            }
            (None, Some(_)) => {
                return Err(PipelineError::model(
                    path.as_ref(),
                    "an SDXL embedding ('clip_l' + 'clip_g'); this model has one text encoder",
                ))
            }
            (_, second) => second.as_ref(),
        };
        // Check every tower takes it before anything changes.
        let towers =
            std::iter::once((&self.text, &file.vectors)).chain(self.text_2.as_ref().zip(second));
        for ((tokenizer, encoder), vectors) in towers {
            let refuse = |message: String| Err(PipelineError::model(path.as_ref(), message));
            if let Some(taken) = tokens.iter().find(|t| tokenizer.contains(t)) {
                return refuse(format!(
                    "the token '{taken}' is already in the tokenizer; pass another token"
                ));
            }
            let width = encoder.config().hidden_size;
            if vectors.size()[1] != width {
                return refuse(format!(
                    "vectors of width {} do not fit a text encoder of width {width}",
                    vectors.size()[1]
                ));
            }
            if tokenizer.len() as i64 != encoder.token_count() {
                return refuse(format!(
                    "the tokenizer has {} tokens but its text encoder embeds {}",
                    tokenizer.len(),
                    encoder.token_count()
                ));
            }
        }
        for ((tokenizer, encoder), vectors) in
            std::iter::once((&mut self.text, &file.vectors)).chain(self.text_2.as_mut().zip(second))
        {
            let first = tokenizer.add_embedding_tokens(&tokens)?;
            encoder.get_mut().add_token_embeddings(first, vectors)?;
        }
        Ok(tokens)
    }
}
