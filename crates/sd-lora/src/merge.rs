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

use sd_core::weights::KeyMap;
use tch::{nn::VarStore, Kind, Tensor};

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
    /// Other dotted names of its modules, for files that use them, each
    /// with the weight variables its update goes to: the original LDM UNet
    /// names SDXL files often carry (`KeyMap::To`), Stability's SD3 names
    /// kohya's SD3 files carry (a fused q/k/v as `KeyMap::SplitRows`, an
    /// AdaLN stored (shift, scale) as `KeyMap::SwapHalves`). Other maps are
    /// not updates of a weight and are ignored.
    pub aliases: Vec<(String, KeyMap)>,
}

/// Where a module's update goes: one weight, its rows spread over several
/// (a fused projection), or one weight with the two halves of its rows
/// swapped.
#[derive(Debug, Clone, PartialEq)]
enum Site {
    One(String),
    Rows(Vec<String>),
    SwappedHalves(String),
}

impl Site {
    fn of(map: &KeyMap) -> Option<Site> {
        match map {
            KeyMap::To(weight) => Some(Site::One(weight.clone())),
            KeyMap::SplitRows(weights) => Some(Site::Rows(weights.clone())),
            KeyMap::SplitRowsBy(parts) => {
                Some(Site::Rows(parts.iter().map(|(w, _)| w.clone()).collect()))
            }
            KeyMap::SwapHalves(weight) => Some(Site::SwappedHalves(weight.clone())),
            _ => None,
        }
    }

    fn weights(&self) -> &[String] {
        match self {
            Site::One(w) | Site::SwappedHalves(w) => std::slice::from_ref(w),
            Site::Rows(ws) => ws,
        }
    }

    /// The update of each weight, from the update of the module as the file
    /// sees it.
    fn parts(&self, delta: &Tensor, variables: &[Tensor]) -> Vec<Tensor> {
        match self {
            Site::One(_) => vec![delta.shallow_clone()],
            Site::SwappedHalves(_) => {
                let half = delta.size()[0] / 2;
                vec![Tensor::cat(
                    &[delta.narrow(0, half, half), delta.narrow(0, 0, half)],
                    0,
                )]
            }
            Site::Rows(_) => {
                let mut start = 0;
                variables
                    .iter()
                    .map(|v| {
                        let rows = v.size()[0];
                        start += rows;
                        delta.narrow(0, start - rows, rows)
                    })
                    .collect()
            }
        }
    }
}

/// The modules of a pipeline's models, by every name files use for them.
/// It holds the models' variables (handles sharing their storage), read
/// once when it is made.
pub struct Targets {
    /// Per model: every name a file may use for a module -> where its
    /// update goes.
    index: HashMap<Component, HashMap<String, Site>>,
    /// Per model: its variables by name.
    variables: HashMap<Component, HashMap<String, Tensor>>,
    /// Per model: the dtype it computes in (what a weight kept in 8 bits
    /// becomes when an adapter is merged into it).
    kinds: HashMap<Component, Kind>,
}

impl Targets {
    /// Indexes each target's weights: a module `m` with a variable
    /// `m.weight` is found as `m`, as kohya's `m` with `_` for `.`, by its
    /// aliases, and (text encoders) without the `text_model.` prefix.
    pub fn new(targets: Vec<Target<'_>>) -> Self {
        let mut index = HashMap::new();
        let mut variables = HashMap::new();
        let mut kinds = HashMap::new();
        for target in targets {
            let names: &mut HashMap<String, Site> = index.entry(target.component).or_default();
            let mut add = |name: &str, site: Site| {
                names.insert(underscored(name), site.clone());
                names.insert(name.to_string(), site);
            };
            let store = target.store.variables();
            for variable in store.keys() {
                if let Some(module) = variable.strip_suffix(".weight") {
                    add(module, Site::One(variable.clone()));
                    if let Some(short) = module.strip_prefix("text_model.") {
                        add(short, Site::One(variable.clone()));
                    }
                }
            }
            for (alias, map) in &target.aliases {
                let site =
                    Site::of(map).filter(|s| s.weights().iter().all(|w| store.contains_key(w)));
                if let Some(site) = site {
                    add(alias, site);
                }
            }
            let kind = store
                .values()
                .map(Tensor::kind)
                .find(|k| matches!(k, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double));
            kinds.insert(target.component, kind.unwrap_or(Kind::Float));
            variables.insert(target.component, store);
        }
        Targets {
            index,
            variables,
            kinds,
        }
    }

    /// Where a module's update goes, its variables, and the module's shape
    /// as a file sees it (a fused module's: its parts' rows stacked).
    fn resolve(
        &self,
        component: Component,
        name: &ModuleName,
    ) -> Option<(&Site, Vec<Tensor>, Vec<i64>)> {
        let site = self.index.get(&component)?.get(name.as_str())?;
        let store = self.variables.get(&component)?;
        let variables: Vec<Tensor> = site
            .weights()
            .iter()
            .map(|w| store.get(w).map(Tensor::shallow_clone))
            .collect::<Option<_>>()?;
        // (a weight kept in GGML blocks has the shape of its values)
        let size = sd_core::packed::logical_size;
        let mut shape = size(variables.first()?);
        if let Site::Rows(_) = site {
            if variables.iter().any(|v| size(v)[1..] != shape[1..]) {
                return None;
            }
            shape[0] = variables.iter().map(|v| v.size()[0]).sum();
        }
        Some((site, variables, shape))
    }

    /// The model a file's component is merged into: kohya's `lora_unet_`
    /// names the denoiser, which is SD3's transformer on a model without
    /// a UNet.
    fn denoiser_for(&self, component: Component) -> Component {
        let has = |c| self.variables.contains_key(&c);
        match component {
            Component::Unet if !has(Component::Unet) && has(Component::Transformer) => {
                Component::Transformer
            }
            other => other,
        }
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
        // part alone: refused when the model has no denoiser of the kind
        // the file changes and none of its denoiser modules is in the model
        // (kohya's `lora_unet_` names SD3's transformer too).
        let denoisers = [Component::Unet, Component::Transformer];
        let kind = crate::family::denoiser(lora);
        let mut denoiser_modules = lora
            .modules
            .iter()
            .filter(|m| denoisers.contains(&m.component))
            .peekable();
        if denoiser_modules.peek().is_some()
            && !targets.variables.contains_key(&kind)
            && !denoiser_modules.any(|m| {
                targets
                    .resolve(targets.denoiser_for(m.component), &m.name)
                    .is_some()
            })
        {
            return Err(LoraError::OtherDenoiser {
                path: lora.path.clone(),
                component: kind.name(),
                family: crate::family::guess(lora),
            });
        }
        let mut plan = Vec::new();
        for module in &lora.modules {
            let component = targets.denoiser_for(module.component);
            let label = format!("{}:{}", component.name(), module.name.as_str());
            let Some((site, variables, shape)) = targets.resolve(component, &module.name) else {
                let why = if targets.variables.contains_key(&component) {
                    "no such module in this model".to_string()
                } else {
                    format!("this model has no {}", component.name())
                };
                report.skipped.push((label, why));
                continue;
            };
            if let Err((part, got)) = module.adapter.check(&shape) {
                return Err(LoraError::Shape {
                    path: lora.path.clone(),
                    key: format!("{}.{part}", module.name.as_str()),
                    expected: shape,
                    got,
                    family: crate::family::guess(lora),
                });
            }
            plan.push((module, component, site, variables, shape));
        }
        if plan.is_empty() {
            return Err(no_match(lora));
        }
        let _guard = tch::no_grad_guard();
        for (module, component, site, variables, shape) in plan {
            let scale = module.adapter.alpha_scale(module.alpha) * scale;
            let delta = module.adapter.delta(&shape, scale, variables[0].device())?;
            let parts = site.parts(&delta, &variables);
            for ((weight, mut variable), part) in site.weights().iter().zip(variables).zip(parts) {
                self.originals
                    .entry((component, weight.clone()))
                    .or_insert_with(|| variable.detach().copy());
                // a weight kept narrow (8 bits, GGML blocks) takes the
                // update at full width
                if sd_core::nn::is_kept_narrow(&variable) {
                    let kind = targets
                        .kinds
                        .get(&component)
                        .copied()
                        .unwrap_or(Kind::Float);
                    variable.f_set_data(&sd_core::nn::upcast(&variable, kind))?;
                }
                let _ = variable.f_add_(&part.f_to_kind(variable.kind())?)?;
            }
            *report.applied.entry(component).or_default() += 1;
        }
        Ok(report)
    }

    /// Puts every changed weight back as it was before the first merge.
    pub fn restore(&mut self, targets: &Targets) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for ((component, weight), original) in &self.originals {
            if let Some(variable) = targets.variable(*component, weight) {
                match variable.kind() == original.kind() {
                    true => variable.shallow_clone().f_copy_(original)?,
                    // (a narrow weight widened by the merge: back as it was)
                    false => variable.shallow_clone().f_set_data(original)?,
                }
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
