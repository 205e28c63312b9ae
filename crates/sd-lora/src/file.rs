//! Reading an adapter file: every key parsed, grouped by module, and each
//! module's parts checked to form one known adapter kind. Nothing is
//! skipped silently: keys in no known form, and modules whose parts make no
//! adapter, are listed in [`LoraFile::unknown`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sd_core::weights::MappedFile;
use tch::{Kind, Tensor};

use crate::adapter::{Adapter, Factor};
use crate::error::{LoraError, Result};
use crate::keys::{parse, Component, ModuleName, Part};

/// One module's adapter, as the file gives it.
#[derive(Debug)]
pub struct Module {
    /// The model it is for.
    pub component: Component,
    /// The module, as the file names it.
    pub name: ModuleName,
    /// The factors.
    pub adapter: Adapter,
    /// The file's alpha (scale = alpha / rank); none means scale 1.
    pub alpha: Option<f64>,
}

/// A LoRA / LyCORIS file, read and sorted into modules.
#[derive(Debug)]
pub struct LoraFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Every module with a complete adapter.
    pub modules: Vec<Module>,
    /// Keys (or whole modules) this reader does not understand, with why.
    pub unknown: Vec<(String, String)>,
}

impl LoraFile {
    /// Reads a `.safetensors` adapter file. Pickled files (`.pt`, `.ckpt`,
    /// `.bin`) are refused: they can run code when loaded.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        refuse_pickle(path)?;
        let file = MappedFile::open(path)?;
        let metadata = file.metadata()?;
        let peft = PeftAlphas::from_metadata(path, &metadata)?;
        let mut tensors = crate::flux::Tensors::new();
        for name in file.tensors()?.names() {
            tensors.insert(name.to_string(), file.read(name)?);
        }
        let mut unknown = Vec::new();
        // FLUX LoRAs in other tools' names are first rewritten as diffusers'
        if let Some(layout) = crate::flux::layout(tensors.keys()) {
            let (converted, skipped) = crate::flux::to_diffusers(path, layout, tensors)?;
            tensors = converted;
            unknown.extend(skipped);
        }
        let mut groups: BTreeMap<(Component, ModuleName), BTreeMap<Part, Tensor>> = BTreeMap::new();
        for (name, tensor) in tensors {
            match parse(&name) {
                Some(key) => {
                    groups
                        .entry((key.component, key.module))
                        .or_default()
                        .insert(key.part, tensor);
                }
                None => unknown.push((name, "not a key of any known adapter format".into())),
            }
        }
        let mut modules = Vec::new();
        for ((component, name), mut parts) in groups {
            let label = format!("{}:{}", component.name(), name.as_str());
            if parts.contains_key(&Part::Dora) {
                return Err(LoraError::invalid(
                    path.display().to_string(),
                    format!(
                        "'{label}' is a DoRA module (it has a magnitude vector); DoRA files are \
                         not supported: use a plain LoRA"
                    ),
                ));
            }
            let alpha = match parts.remove(&Part::Alpha) {
                Some(a) => Some(scalar(path, &label, &a)?),
                None => peft.alpha_for(component, name.as_str()),
            };
            match Adapter::from_parts(&mut parts) {
                Some(adapter) if parts.is_empty() => modules.push(Module {
                    component,
                    name,
                    adapter,
                    alpha,
                }),
                _ => {
                    let mut found: Vec<String> = parts.keys().map(|p| format!("{p:?}")).collect();
                    found.sort();
                    unknown.push((
                        label,
                        format!("its parts ({}) make no known adapter", found.join(", ")),
                    ));
                }
            }
        }
        Ok(LoraFile {
            path: path.to_path_buf(),
            modules,
            unknown,
        })
    }
}

impl Adapter {
    /// The adapter the parts make, taking them out of `parts`; `None` when
    /// they make none (missing or contradictory factors).
    fn from_parts(parts: &mut BTreeMap<Part, Tensor>) -> Option<Adapter> {
        let mut take = |p: Part| parts.remove(&p);
        if let (Some(down), Some(up)) = (take(Part::Down), take(Part::Up)) {
            return Some(Adapter::Lora {
                down,
                up,
                mid: take(Part::Mid),
            });
        }
        let hada = [Part::HadaW1A, Part::HadaW1B, Part::HadaW2A, Part::HadaW2B].map(&mut take);
        if let [Some(w1a), Some(w1b), Some(w2a), Some(w2b)] = hada {
            return Some(Adapter::LoHa {
                w1: (w1a, w1b),
                w2: (w2a, w2b),
                t1: take(Part::HadaT1),
                t2: take(Part::HadaT2),
            });
        }
        let factor =
            |whole: Option<Tensor>, a: Option<Tensor>, b: Option<Tensor>| match (whole, a, b) {
                (Some(w), None, None) => Some(Factor::Whole(w)),
                (None, Some(a), Some(b)) => Some(Factor::Product(a, b)),
                _ => None,
            };
        let w1 = factor(take(Part::LokrW1), take(Part::LokrW1A), take(Part::LokrW1B));
        let w2 = factor(take(Part::LokrW2), take(Part::LokrW2A), take(Part::LokrW2B));
        if let (Some(w1), Some(w2)) = (w1, w2) {
            return Some(Adapter::LoKr {
                w1,
                w2,
                t2: take(Part::LokrT2),
            });
        }
        take(Part::Diff).map(Adapter::Diff)
    }
}

/// A stored alpha: one finite number.
fn scalar(path: &Path, label: &str, tensor: &Tensor) -> Result<f64> {
    let bad = || {
        LoraError::invalid(
            path.display().to_string(),
            format!(
                "'{label}.alpha' must be one finite number, got {:?}",
                tensor.size()
            ),
        )
    };
    if tensor.numel() != 1
        || !matches!(
            tensor.kind(),
            Kind::Float
                | Kind::Half
                | Kind::BFloat16
                | Kind::Double
                | Kind::Int64
                | Kind::Int
                | Kind::Int16
                | Kind::Int8
                | Kind::Uint8
        )
    {
        return Err(bad());
    }
    let value = tensor
        .f_to_kind(Kind::Double)?
        .f_reshape([1i64])?
        .f_double_value(&[0])?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(bad())
    }
}

/// PEFT's alphas, from the `lora_adapter_metadata` diffusers writes into the
/// header (`unet.lora_alpha`, `unet.r`, `unet.alpha_pattern`, ...). Without
/// it diffusers takes alpha = rank (scale 1), and so does this reader.
#[derive(Debug, Default)]
struct PeftAlphas {
    per_component: BTreeMap<String, serde_json::Value>,
}

impl PeftAlphas {
    fn from_metadata(
        path: &Path,
        metadata: &std::collections::HashMap<String, String>,
    ) -> Result<Self> {
        let Some(text) = metadata.get("lora_adapter_metadata") else {
            return Ok(PeftAlphas::default());
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            LoraError::invalid(
                format!("{}: lora_adapter_metadata", path.display()),
                e.to_string(),
            )
        })?;
        let object = value.as_object().ok_or_else(|| {
            LoraError::invalid(
                format!("{}: lora_adapter_metadata", path.display()),
                "not a JSON object",
            )
        })?;
        Ok(PeftAlphas {
            per_component: object.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    /// `alpha_pattern` entries name a module by a suffix of its path;
    /// `lora_alpha` is the default. (A `rank_pattern` needs nothing here:
    /// the rank is read off the factors.)
    fn alpha_for(&self, component: Component, module: &str) -> Option<f64> {
        let field = |name: &str| {
            self.per_component
                .get(&format!("{}.{name}", component.name()))
        };
        if let Some(patterns) = field("alpha_pattern").and_then(|p| p.as_object()) {
            let hit = patterns
                .iter()
                .filter(|(pattern, _)| {
                    module == pattern.as_str() || module.ends_with(&format!(".{pattern}"))
                })
                .max_by_key(|(pattern, _)| pattern.len());
            if let Some((_, alpha)) = hit {
                return alpha.as_f64();
            }
        }
        field("lora_alpha").and_then(|a| a.as_f64())
    }
}

/// Pickles are refused by extension, before anything is read.
pub(crate) fn refuse_pickle(path: &Path) -> Result<()> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if matches!(
        extension.as_deref(),
        Some("pt" | "pth" | "ckpt" | "bin" | "pkl")
    ) {
        return Err(LoraError::invalid(
            path.display().to_string(),
            "a Python pickle, which can run code when loaded; convert it to .safetensors \
             (for example with safetensors.torch.save_file in Python) and load that",
        ));
    }
    Ok(())
}
