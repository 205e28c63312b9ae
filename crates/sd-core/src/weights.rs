//! Loading weight files (diffusers-layout safetensors, or GGUF) into a
//! `tch` `VarStore`.
//!
//! The model is built first, uninitialised (its `VarStore` then holds every
//! variable under its diffusers key name, on the target device and dtype);
//! the files are memory-mapped. A CPU variable of the stored dtype then
//! becomes a tensor over the file's own bytes (no copy, no new memory; see
//! [`crate::mapped`]); any other is read and converted or moved on the way.
//! No second full copy of the weights is made in host memory.
//!
//! Every problem is collected before failing, so one error lists all the
//! missing, unexpected and wrongly shaped tensors by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Tensor};

use crate::error::{CoreError, Result};

/// Maps a file key to the model's name for it; `None` drops the key.
pub type Rename<'a> = &'a dyn Fn(&str) -> Option<String>;

/// How file keys relate to the model's variable names.
#[derive(Default)]
pub struct LoadOptions<'a> {
    /// Maps a key found in a file to the model's name for it, or `None` to
    /// drop it silently (for example a buffer the model recomputes). Keys
    /// are kept as they are when this is unset.
    pub rename: Option<Rename<'a>>,
    /// Keys in the files that no model variable takes are an error unless
    /// this is set.
    pub allow_unexpected: bool,
}

pub use crate::load_report::LoadReport;
pub use crate::mapped::{Entry, MappedFile, Stored};
use crate::packed;

/// How one file key becomes model variables (single-file checkpoints need
/// more than a rename).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyMap {
    /// Not part of this model: ignored, not reported.
    Skip,
    /// The same tensor under the model's name.
    To(String),
    /// A 1x1 convolution weight (out, in, 1, 1) for a linear layer (out, in).
    Squeeze(String),
    /// A (in, out) matrix stored for `x @ W`, for a linear layer's (out, in).
    Transpose(String),
    /// Rows split into equal parts (a fused q/k/v projection), one per name.
    SplitRows(Vec<String>),
    /// Rows split into parts of the given row counts, in order (FLUX's
    /// fused q/k/v and MLP input), one per name.
    SplitRowsBy(Vec<(String, i64)>),
    /// The two halves of the rows swapped: an AdaLN projection stored as
    /// (shift, scale) for a model that reads (scale, shift).
    SwapHalves(String),
}

impl KeyMap {
    /// The variables a file tensor of `shape` fills, with the shapes it
    /// gives them: what a manifest check compares without the tensors.
    pub fn targets(&self, shape: &[i64]) -> Vec<(String, Vec<i64>)> {
        match self {
            KeyMap::Skip => vec![],
            KeyMap::To(n) | KeyMap::SwapHalves(n) => vec![(n.clone(), shape.to_vec())],
            KeyMap::Squeeze(n) if shape.len() == 4 => vec![(n.clone(), shape[..2].to_vec())],
            KeyMap::Squeeze(n) => vec![(n.clone(), shape.to_vec())],
            KeyMap::Transpose(n) if shape.len() == 2 => vec![(n.clone(), vec![shape[1], shape[0]])],
            KeyMap::Transpose(n) => vec![(n.clone(), shape.to_vec())],
            KeyMap::SplitRows(names) => {
                let mut part = shape.to_vec();
                if let Some(rows) = part.first_mut() {
                    *rows /= names.len().max(1) as i64;
                }
                names.iter().map(|n| (n.clone(), part.clone())).collect()
            }
            KeyMap::SplitRowsBy(parts) => parts
                .iter()
                .map(|(n, rows)| {
                    let mut part = shape.to_vec();
                    if let Some(first) = part.first_mut() {
                        *first = *rows;
                    }
                    (n.clone(), part)
                })
                .collect(),
        }
    }
}

/// Copies the tensors of `files` into the variables of `vs`.
///
/// Fails, listing every offending name, when a variable has no tensor, a
/// tensor has another shape, or (unless allowed) a tensor has no variable.
/// Nothing is half-loaded silently: on error the store may hold some copied
/// tensors, and the caller drops it.
pub fn load_safetensors<P: AsRef<Path>>(
    vs: &VarStore,
    files: &[P],
    options: &LoadOptions<'_>,
) -> Result<LoadReport> {
    let map = |key: &str| match options.rename {
        Some(rename) => rename(key).map_or(KeyMap::Skip, KeyMap::To),
        None => KeyMap::To(key.to_string()),
    };
    load_mapped(vs, files, &map, options.allow_unexpected)
}

/// [`load_safetensors`] with a [`KeyMap`] per file key. A CPU variable of
/// the stored dtype takes the file's bytes in place (through the view its
/// map makes, when contiguous); any other tensor is read from the file into
/// a buffer of its own (touching the mapped data would keep its pages
/// resident beside the converted copy), transformed, and copied.
pub fn load_mapped<P: AsRef<Path>>(
    vs: &VarStore,
    files: &[P],
    map: &dyn Fn(&str) -> KeyMap,
    allow_unexpected: bool,
) -> Result<LoadReport> {
    load_mapped_per_file(vs, files, &|_, key| map(key), allow_unexpected)
}

/// [`load_mapped`] where the map also gets the index of the file a key is
/// in: for model parts saved as separate files under the same names (the
/// original TAESD encoder and decoder).
pub fn load_mapped_per_file<P: AsRef<Path>>(
    vs: &VarStore,
    files: &[P],
    map: &dyn Fn(usize, &str) -> KeyMap,
    allow_unexpected: bool,
) -> Result<LoadReport> {
    let mapped = files
        .iter()
        .map(MappedFile::open)
        .collect::<Result<Vec<_>>>()?;

    // Model name -> (file index, key in that file, transform, part).
    let mut available: HashMap<String, (usize, String, KeyMap, usize)> = HashMap::new();
    let scales: Vec<Scales> = mapped.iter().map(scaled_fp8).collect();
    for (index, file) in mapped.iter().enumerate() {
        for entry in file.entries() {
            let key = entry.name.as_str();
            if scales[index].hides(key) {
                continue;
            }
            let mapping = map(index, key);
            let targets: Vec<String> = match &mapping {
                KeyMap::Skip => continue,
                KeyMap::To(n)
                | KeyMap::Squeeze(n)
                | KeyMap::Transpose(n)
                | KeyMap::SwapHalves(n) => vec![n.clone()],
                KeyMap::SplitRows(names) => names.clone(),
                KeyMap::SplitRowsBy(parts) => parts.iter().map(|(n, _)| n.clone()).collect(),
            };
            for (part, name) in targets.into_iter().enumerate() {
                available.insert(name, (index, key.to_string(), mapping.clone(), part));
            }
        }
    }

    let variables = vs.variables();
    let mut report = LoadReport::default();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let _guard = tch::no_grad_guard();
    for name in names {
        let var = &variables[name];
        let Some((index, key, mapping, part)) = available.remove(name) else {
            report.missing.push(name.clone());
            continue;
        };
        let file = &mapped[index];
        let entry = file
            .entry(&key)
            .expect("keys come from this file's entries");
        let scale = match scales[index].weights.get(&key) {
            Some(scale) => Some(file.read(scale)?),
            None => None,
        };
        let source = (entry, scale);
        if let Some(shape) = fill((name.as_str(), var), file, source, &mapping, part)? {
            report.mismatched.push((name.clone(), var.size(), shape));
        }
    }
    report.unexpected = available.into_keys().collect();
    report.unexpected.sort();

    if report.is_fatal(allow_unexpected) {
        let files = files
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(CoreError::Weights { files, report });
    }
    Ok(report)
}

/// Fills the variable `name` with the file tensor `entry` (its `part` of it,
/// as `mapping` says), or returns the tensor's shape where it does not fit.
///
/// A CPU variable of the stored dtype becomes the file's bytes (or a view of
/// them); so does a layer's weight stored narrow (in 8 bits, or in GGML
/// blocks moved or split by rows only), kept so and upcast by its layer on
/// each use. Anything else is read, then decoded, converted or moved.
fn fill(
    (name, var): (&str, &Tensor),
    file: &MappedFile,
    (entry, scale): (&Entry, Option<Tensor>),
    mapping: &KeyMap,
    part: usize,
) -> Result<Option<Vec<i64>>> {
    let layer_weight = name.ends_with(".weight") && var.dim() >= 2;
    let keep = scale.is_none()
        && match &entry.stored {
            Stored::Torch(kind) => {
                *kind == var.kind() || (crate::nn::is_fp8(*kind) && layer_weight)
            }
            Stored::Ggml(_) => {
                let by_rows = matches!(
                    mapping,
                    KeyMap::To(_)
                        | KeyMap::SplitRows(_)
                        | KeyMap::SplitRowsBy(_)
                        | KeyMap::SwapHalves(_)
                );
                layer_weight && by_rows
            }
            _ => false,
        };
    let raw = match keep && var.device() == tch::Device::Cpu {
        true => file.in_place(entry)?,
        false => None,
    };
    let raw = match raw {
        Some(raw) => raw,
        None => file.read_entry(entry)?,
    };
    let raw = match (keep, &entry.stored, scale) {
        (false, Stored::Ggml(_), _) => packed::unpack(&raw, tch::Kind::Float),
        // (in f32, then rounded once to the variable's dtype)
        (_, _, Some(scale)) => {
            raw.f_to_kind(tch::Kind::Float)? * scale.f_to_kind(tch::Kind::Float)?
        }
        _ => raw,
    };
    let source = transform(&raw, mapping, part);
    let shape = packed::logical_size(&source);
    if shape != var.size() {
        return Ok(Some(shape));
    }
    if keep && source.is_contiguous() {
        let mut var = var.shallow_clone();
        if packed::is_packed(&source) {
            // (bytes take no gradient; these models are not trained)
            let _ = var.set_requires_grad(false);
        }
        var.f_set_data(&source.f_to_device(var.device())?)?;
    } else {
        var.shallow_clone().f_copy_(&source)?;
    }
    Ok(None)
}

/// ComfyUI's scaled fp8 files (`t5xxl_fp8_e4m3fn_scaled.safetensors`, the
/// `*_fp8_scaled` models): a layer's fp8 `X.weight` stands for its values
/// times a scalar beside it, `X.scale_weight` (with a `scaled_fp8` marker
/// tensor) or, in ComfyUI's newer form, `X.weight_scale`. Such a weight is
/// scaled at load into the model's dtype (not kept in 8 bits). Input
/// scales (`X.scale_input`, `X.input_scale`) serve fp8 matrix products,
/// which are not used here.
#[derive(Default)]
struct Scales {
    /// Weight key -> its scale's key.
    weights: HashMap<String, String>,
    /// Keys no model variable takes: the scales and the marker.
    hidden: std::collections::HashSet<String>,
}

impl Scales {
    fn hides(&self, key: &str) -> bool {
        self.hidden.contains(key)
    }
}

fn scaled_fp8(file: &MappedFile) -> Scales {
    let mut scales = Scales::default();
    let is_fp8 = |key: &str| match file.entry(key).map(|e| &e.stored) {
        Some(Stored::Torch(kind)) => crate::nn::is_fp8(*kind),
        _ => false,
    };
    for entry in file.entries() {
        let name = entry.name.as_str();
        let layer =
            (name.strip_suffix(".scale_weight")).or_else(|| name.strip_suffix(".weight_scale"));
        if let Some(layer) = layer {
            let weight = format!("{layer}.weight");
            if is_fp8(&weight) && entry.shape.iter().product::<i64>() == 1 {
                scales.weights.insert(weight, name.to_string());
                scales.hidden.insert(name.to_string());
            }
        }
        let input_scale = name.ends_with(".scale_input") || name.ends_with(".input_scale");
        if name == "scaled_fp8" || input_scale {
            scales.hidden.insert(name.to_string());
        }
    }
    scales
}

/// The file tensor as the variable wants it (views, but for the halves
/// swapped).
fn transform(raw: &Tensor, mapping: &KeyMap, part: usize) -> Tensor {
    match mapping {
        KeyMap::SwapHalves(_) if raw.dim() >= 1 && raw.size()[0] % 2 == 0 => {
            let half = raw.size()[0] / 2;
            Tensor::cat(&[raw.narrow(0, half, half), raw.narrow(0, 0, half)], 0)
        }
        KeyMap::Squeeze(_) if raw.dim() == 4 && raw.size()[2..] == [1, 1] => raw.flatten(1, -1),
        KeyMap::Transpose(_) if raw.dim() == 2 => raw.tr(),
        KeyMap::SplitRows(names) => {
            let rows = raw.size()[0];
            let n = names.len() as i64;
            if rows % n == 0 {
                raw.narrow(0, part as i64 * rows / n, rows / n)
            } else {
                raw.shallow_clone()
            }
        }
        KeyMap::SplitRowsBy(parts) => {
            let start: i64 = parts[..part].iter().map(|(_, r)| r).sum();
            let total: i64 = parts.iter().map(|(_, r)| r).sum();
            match raw.dim() >= 1 && raw.size()[0] == total {
                true => raw.narrow(0, start, parts[part].1),
                false => raw.shallow_clone(),
            }
        }
        _ => raw.shallow_clone(),
    }
}

/// The safetensors files of a component folder, as diffusers names them:
/// `{stem}.safetensors`, its `{stem}.{variant}.safetensors` form (variant
/// "fp16" and the like), or the shards listed by `{stem}.safetensors.index.json`.
pub fn component_files(dir: &Path, stem: &str, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    let base = match variant {
        Some(v) => format!("{stem}.{v}"),
        None => stem.to_string(),
    };
    let single = dir.join(format!("{base}.safetensors"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(format!("{base}.safetensors.index.json"));
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| CoreError::io(&index, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| CoreError::Json {
                path: index.clone(),
                source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                CoreError::invalid(index.display().to_string(), "no \"weight_map\" object")
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    Err(CoreError::io(
        &single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no weights: expected {base}.safetensors or {base}.safetensors.index.json"),
        ),
    ))
}

/// Copies every variable of `from` into the same-named variable of `to`
/// (converting dtype and device). Both stores must hold the same names.
pub fn copy_variables(from: &VarStore, to: &VarStore) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let source = from.variables();
    for (name, mut var) in to.variables() {
        let value = source.get(&name).ok_or_else(|| {
            CoreError::invalid(
                "copy_variables",
                format!("no variable '{name}' to copy from"),
            )
        })?;
        var.f_copy_(value)?;
    }
    Ok(())
}
