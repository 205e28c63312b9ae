//! Merging adapters into a model's weights, and taking them out again.
//!
//! Merging adds `scale * alpha / rank * update` to each weight in place, so
//! generation runs at the base model's speed. Before a weight is first
//! changed, its original is copied aside ([`Merged`] keeps them, on the
//! weight's device and in its dtype); [`Merged::restore`] copies them back.
//! Undoing is therefore exact in any dtype, however many times LoRAs are
//! swapped, at the memory cost of one copy of each weight any LoRA touches
//! (see [`Merged::saved_bytes`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use tch::{nn::VarStore, Tensor};

use crate::error::{LoraError, Result};
use crate::file::LoraFile;
use crate::keys::{Component, ModuleName};

/// One model an adapter may change, with its variables under diffusers
/// names.
pub struct Target<'a> {
    /// Which model it is.
    pub component: Component,
    /// Its variables.
    pub store: &'a VarStore,
    /// Other dotted names of its modules (alias -> module), for files that
    /// use them: the original LDM UNet names SDXL files often carry.
    pub aliases: Vec<(String, String)>,
}

/// The modules of a pipeline's models, by every name files use for them.
/// It holds the models' variables (handles sharing their storage), read
/// once when it is made.
pub struct Targets {
    /// Per model: every name a file may use for a module -> its weight's
    /// variable name.
    index: HashMap<Component, HashMap<String, String>>,
    /// Per model: its variables by name.
    variables: HashMap<Component, HashMap<String, Tensor>>,
}

impl Targets {
    /// Indexes each target's weights: a module `m` with a variable
    /// `m.weight` is found as `m`, as kohya's `m` with `_` for `.`, by its
    /// aliases, and (text encoders) without the `text_model.` prefix.
    pub fn new(targets: Vec<Target<'_>>) -> Self {
        let mut index = HashMap::new();
        let mut variables = HashMap::new();
        for target in targets {
            let names: &mut HashMap<String, String> = index.entry(target.component).or_default();
            let mut add = |name: &str, module: &str| {
                let weight = format!("{module}.weight");
                names.insert(name.to_string(), weight.clone());
                names.insert(underscored(name), weight);
            };
            let store = target.store.variables();
            for variable in store.keys() {
                if let Some(module) = variable.strip_suffix(".weight") {
                    add(module, module);
                    if let Some(short) = module.strip_prefix("text_model.") {
                        add(short, module);
                    }
                }
            }
            for (alias, module) in &target.aliases {
                add(alias, module);
            }
            variables.insert(target.component, store);
        }
        Targets { index, variables }
    }

    /// The weight variable (and its name) a module name resolves to.
    fn resolve(&self, component: Component, name: &ModuleName) -> Option<(&str, &Tensor)> {
        let weight = self.index.get(&component)?.get(name.as_str())?;
        Some((weight, self.variables.get(&component)?.get(weight)?))
    }

    /// A weight variable by its name.
    fn variable(&self, component: Component, weight: &str) -> Option<&Tensor> {
        self.variables.get(&component)?.get(weight)
    }
}

fn underscored(name: &str) -> String {
    name.replace('.', "_")
}

/// What one [`Merged::apply`] did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ApplyReport {
    /// The file.
    pub path: PathBuf,
    /// Modules merged, per model.
    pub applied: BTreeMap<Component, usize>,
    /// Modules or keys left out, with why (unknown forms, modules this
    /// model lacks, a text encoder it does not have).
    pub skipped: Vec<(String, String)>,
}

impl ApplyReport {
    /// Modules merged in all.
    pub fn applied_total(&self) -> usize {
        self.applied.values().sum()
    }
}

/// The originals of every weight changed so far.
#[derive(Debug, Default)]
pub struct Merged {
    originals: BTreeMap<(Component, String), Tensor>,
}

// SAFETY: its `&self` methods only count and measure the saved originals; merging and
// restoring take `&mut self`.
unsafe impl sd_core::shared::ReadOnlyShared for Merged {}

impl Merged {
    /// Nothing merged yet.
    pub fn new() -> Self {
        Merged::default()
    }

    /// Adds `lora` at `scale` to the targets' weights. Every module is
    /// resolved and shape-checked before any weight changes, so a file
    /// that does not fit leaves the model as it was.
    pub fn apply(&mut self, lora: &LoraFile, scale: f64, targets: &Targets) -> Result<ApplyReport> {
        if !scale.is_finite() {
            return Err(LoraError::invalid(
                format!("{}: scale", lora.path.display()),
                format!("{scale} is not a finite number"),
            ));
        }
        let mut report = ApplyReport {
            path: lora.path.clone(),
            skipped: lora.unknown.clone(),
            ..ApplyReport::default()
        };
        // A UNet LoRA on SD3 (or the reverse) would merge its text-encoder
        // part alone: refused instead.
        let denoisers = [Component::Unet, Component::Transformer];
        if let Some(missing) = lora
            .modules
            .iter()
            .map(|m| m.component)
            .find(|c| denoisers.contains(c) && !targets.variables.contains_key(c))
        {
            return Err(LoraError::OtherDenoiser {
                path: lora.path.clone(),
                component: missing.name(),
                family: crate::family::guess(lora),
            });
        }
        let mut plan = Vec::new();
        for module in &lora.modules {
            let label = format!("{}:{}", module.component.name(), module.name.as_str());
            let Some((weight, variable)) = targets.resolve(module.component, &module.name) else {
                let why = if targets.variables.contains_key(&module.component) {
                    "no such module in this model".to_string()
                } else {
                    format!("this model has no {}", module.component.name())
                };
                report.skipped.push((label, why));
                continue;
            };
            let shape = variable.size();
            if let Err((part, got)) = module.adapter.check(&shape) {
                return Err(LoraError::Shape {
                    path: lora.path.clone(),
                    key: format!("{}.{part}", module.name.as_str()),
                    expected: shape,
                    got,
                    family: crate::family::guess(lora),
                });
            }
            plan.push((module, variable.shallow_clone(), weight.to_string()));
        }
        if plan.is_empty() {
            return Err(no_match(lora));
        }
        let _guard = tch::no_grad_guard();
        for (module, mut variable, weight) in plan {
            self.originals
                .entry((module.component, weight))
                .or_insert_with(|| variable.detach().copy());
            let scale = module.adapter.alpha_scale(module.alpha) * scale;
            let delta = module
                .adapter
                .delta(&variable.size(), scale, variable.device())?;
            let _ = variable.f_add_(&delta.f_to_kind(variable.kind())?)?;
            *report.applied.entry(module.component).or_default() += 1;
        }
        Ok(report)
    }

    /// Puts every changed weight back as it was before the first merge.
    pub fn restore(&mut self, targets: &Targets) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for ((component, weight), original) in &self.originals {
            if let Some(variable) = targets.variable(*component, weight) {
                variable.shallow_clone().f_copy_(original)?;
            }
        }
        // only once all are back: a failed copy leaves them restorable
        self.originals.clear();
        Ok(())
    }

    /// Whether any weight is changed.
    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    /// Bytes held by the saved originals.
    pub fn saved_bytes(&self) -> usize {
        self.originals
            .values()
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }
}

/// The error for a file none of whose modules is in the model: a few of
/// its names, and the family its shapes suggest.
fn no_match(lora: &LoraFile) -> LoraError {
    let names: Vec<&str> = lora
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .chain(lora.unknown.iter().map(|(k, _)| k.as_str()))
        .take(3)
        .collect();
    LoraError::NoMatch {
        path: lora.path.clone(),
        count: lora.modules.len() + lora.unknown.len(),
        examples: names.join(", "),
        family: crate::family::guess(lora),
    }
}
