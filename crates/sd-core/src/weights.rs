//! Loading diffusers-layout safetensors into a `tch` `VarStore`.
//!
//! The model is built first (its `VarStore` then holds every variable under
//! its diffusers key name, on the target device and dtype); the files are
//! memory-mapped and each tensor is copied straight into its variable, which
//! converts dtype and moves it to the device on the way. No second full copy
//! of the weights is made in host memory.
//!
//! Every problem is collected before failing, so one error lists all the
//! missing, unexpected and wrongly shaped tensors by name.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{nn::VarStore, Kind, Tensor};

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

/// One memory-mapped safetensors file.
pub struct MappedFile {
    path: PathBuf,
    file: File,
    mmap: Mmap,
}

impl MappedFile {
    /// Opens and memory-maps `path`; the header is checked when read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| CoreError::io(&path, e))?;
        // SAFETY: the map is read-only and lives as long as this value; a file
        // changed underneath while loading is outside what any loader guards.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| CoreError::io(&path, e))?;
        let mapped = MappedFile { path, file, mmap };
        mapped.tensors()?;
        Ok(mapped)
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header: every tensor's name, dtype, shape and bytes.
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| CoreError::SafeTensors {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// The header's `__metadata__` strings (empty when it has none).
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, metadata) =
            SafeTensors::read_metadata(&self.mmap).map_err(|e| CoreError::SafeTensors {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(metadata.metadata().clone().unwrap_or_default())
    }

    /// Names and shapes of every tensor in the file.
    pub fn shapes(&self) -> Result<BTreeMap<String, Vec<i64>>> {
        Ok(self
            .tensors()?
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().iter().map(|&d| d as i64).collect()))
            .collect())
    }

    /// One tensor of the header, read from the file (not the map) into a
    /// new CPU tensor in its stored dtype.
    fn read_view(&self, name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor> {
        let kind = kind_of(view.dtype()).ok_or_else(|| CoreError::UnsupportedDType {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_empty(&shape, (kind, tch::Device::Cpu))?;
        self.read_into(view, &tensor)?;
        Ok(tensor)
    }

    /// Reads a tensor's bytes from the file straight into `target`, a
    /// contiguous CPU tensor of exactly that many bytes (the caller checks).
    fn read_into(&self, view: &safetensors::tensor::TensorView<'_>, target: &Tensor) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let data = view.data();
        if data.is_empty() {
            return Ok(());
        }
        // where the bytes are, from the header alone (no page is touched)
        let offset = data.as_ptr() as usize - self.mmap.as_ptr() as usize;
        // SAFETY: `target` is a contiguous CPU tensor of exactly `data.len()`
        // bytes (numel * element size, as the parser and the caller checked),
        // and nothing else uses it while it is written.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(target.data_ptr() as *mut u8, data.len()) };
        self.file
            .read_exact_at(bytes, offset as u64)
            .map_err(|e| CoreError::io(&self.path, e))
    }

    /// Reads one tensor onto the CPU in its stored dtype (an owned copy).
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let tensors = self.tensors()?;
        let view = tensors.tensor(name).map_err(|e| CoreError::SafeTensors {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(view_to_tensor(&self.path, name, &view)?.f_detach_copy()?)
    }
}

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

/// [`load_safetensors`] with a [`KeyMap`] per file key. Each tensor is read
/// from the file into a buffer of its own (the map serves only the header:
/// touching the mapped data would keep every page resident until the map
/// drops, doubling the peak memory of a load), transformed as a view, and
/// copied into its variable.
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
    let headers = mapped
        .iter()
        .map(MappedFile::tensors)
        .collect::<Result<Vec<_>>>()?;

    // Model name -> (file index, key in that file, transform, part).
    let mut available: HashMap<String, (usize, String, KeyMap, usize)> = HashMap::new();
    for (index, header) in headers.iter().enumerate() {
        for key in header.names() {
            let mapping = map(index, key);
            let targets: Vec<String> = match &mapping {
                KeyMap::Skip => continue,
                KeyMap::To(n)
                | KeyMap::Squeeze(n)
                | KeyMap::Transpose(n)
                | KeyMap::SwapHalves(n) => vec![n.clone()],
                KeyMap::SplitRows(names) => names.clone(),
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
        let view = headers[index]
            .tensor(&key)
            .map_err(|e| CoreError::SafeTensors {
                path: mapped[index].path.clone(),
                message: e.to_string(),
            })?;
        // Straight into the variable when nothing changes on the way (the
        // usual case for a CPU model), else through a buffer of its own.
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if matches!(mapping, KeyMap::To(_))
            && var.device() == tch::Device::Cpu
            && kind_of(view.dtype()) == Some(var.kind())
            && var.is_contiguous()
            && shape == var.size()
        {
            mapped[index].read_into(&view, var)?;
            continue;
        }
        let raw = mapped[index].read_view(&key, &view)?;
        let source = transform(&raw, &mapping, part);
        if source.size() != var.size() {
            report
                .mismatched
                .push((name.clone(), var.size(), source.size()));
            continue;
        }
        var.shallow_clone().f_copy_(&source)?;
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
        _ => raw.shallow_clone(),
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// A CPU tensor over the file's bytes. Aligned data is borrowed from the
/// map without a copy; the caller copies it into its variable at once.
fn view_to_tensor(
    path: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<Tensor> {
    let kind = kind_of(view.dtype()).ok_or_else(|| CoreError::UnsupportedDType {
        path: path.to_path_buf(),
        name: name.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let data = view.data();
    let element = kind.elt_size_in_bytes();
    if data.as_ptr() as usize % element == 0 {
        let mut strides = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        // SAFETY: `data` holds exactly numel * element bytes (checked by the
        // safetensors parser), is aligned for `kind`, and outlives the
        // returned tensor's use: callers copy from it before the map drops.
        // libtorch only reads it.
        Ok(unsafe { Tensor::from_blob(data.as_ptr(), &shape, &strides, kind, tch::Device::Cpu) })
    } else {
        Ok(Tensor::f_from_data_size(data, &shape, kind)?)
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
