//! One memory-mapped safetensors file, and tensors that live in it.
//!
//! The file is mapped private and writable: a weight used as it is stored
//! becomes a tensor over the mapped bytes themselves ([`MappedFile::in_place`]),
//! so loading it costs no allocation, no copy and no zeroed page: the pages
//! are the page cache's, mapped on first use. Each such tensor holds the
//! mapping alive. A write through one (a LoRA fused into a weight) copies
//! that page privately; the file never changes. Where the kernel refuses a
//! writable private map (strict overcommit), the file is mapped read-only
//! and every tensor is read into memory of its own instead.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use tch::{Kind, Tensor};

use crate::error::{CoreError, Result};

/// The mapping; tensors in place hold it through an `Arc`.
enum Map {
    /// Private and writable (copy on write): tensors may live in it.
    Private(memmap2::MmapMut),
    /// Read-only: only the header is read from it.
    ReadOnly(Mmap),
}

impl Map {
    fn bytes(&self) -> &[u8] {
        match self {
            Map::Private(map) => map,
            Map::ReadOnly(map) => map,
        }
    }
}

/// One memory-mapped safetensors file.
pub struct MappedFile {
    path: PathBuf,
    file: File,
    map: Arc<Map>,
    /// Where a private map starts, for tensors written through (taken once
    /// from the `MmapMut`; libtorch, not Rust, writes through it).
    writable: Option<usize>,
}

impl MappedFile {
    /// Opens and memory-maps `path`; the header is checked when read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| CoreError::io(&path, e))?;
        // SAFETY (both maps): the map lives as long as this value or the
        // last tensor in it; a file truncated underneath while in use is
        // outside what any loader (safetensors' or torch's) guards.
        let (map, writable) = match unsafe { MmapOptions::new().map_copy(&file) } {
            Ok(mut map) => {
                let base = map.as_mut_ptr() as usize;
                (Map::Private(map), Some(base))
            }
            Err(_) => {
                let map = unsafe { Mmap::map(&file) }.map_err(|e| CoreError::io(&path, e))?;
                (Map::ReadOnly(map), None)
            }
        };
        let mapped = MappedFile {
            path,
            file,
            map: Arc::new(map),
            writable,
        };
        mapped.tensors()?;
        Ok(mapped)
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header: every tensor's name, dtype, shape and bytes.
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(self.map.bytes()).map_err(|e| self.header_error(e))
    }

    fn header_error(&self, e: safetensors::SafeTensorError) -> CoreError {
        CoreError::SafeTensors {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The header's `__metadata__` strings (empty when it has none).
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, metadata) =
            SafeTensors::read_metadata(self.map.bytes()).map_err(|e| self.header_error(e))?;
        Ok(metadata.metadata().clone().unwrap_or_default())
    }

    /// Names and shapes of every tensor in the file.
    pub fn shapes(&self) -> Result<BTreeMap<String, Vec<i64>>> {
        Ok(self
            .tensors()?
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, shape_of(&view)))
            .collect())
    }

    /// A tensor of the header as a CPU tensor over the file's own bytes, in
    /// its stored dtype; `None` where that cannot be (a read-only map, data
    /// not aligned for its dtype, an empty tensor). Nothing is read until
    /// the tensor is used.
    pub fn in_place(&self, name: &str, view: &TensorView<'_>) -> Result<Option<Tensor>> {
        let kind = self.kind(name, view)?;
        let data = view.data();
        let Some(base) = self.writable else {
            return Ok(None);
        };
        if data.is_empty() || data.as_ptr() as usize % kind.elt_size_in_bytes() != 0 {
            return Ok(None);
        }
        let offset = data.as_ptr() as usize - self.map.bytes().as_ptr() as usize;
        let owner = Box::new(Arc::clone(&self.map));
        // SAFETY: the bytes lie inside the private writable map (the parser
        // checked numel * element size against the file), aligned for
        // `kind`; the tensor holds the map alive, and writes through it
        // only touch private copies of its pages.
        let tensor = unsafe {
            crate::ffi::mapped::tensor_over(
                owner,
                (base + offset) as *mut u8,
                &shape_of(view),
                kind,
            )
        }?;
        Ok(Some(tensor))
    }

    /// One tensor of the header, read from the file (not the map) into a
    /// new CPU tensor in its stored dtype: where the bytes are converted or
    /// copied elsewhere right away, reading keeps the map's pages untouched
    /// (touched, they would stay resident as long as the map).
    pub fn read_view(&self, name: &str, view: &TensorView<'_>) -> Result<Tensor> {
        let kind = self.kind(name, view)?;
        let tensor = Tensor::f_empty(shape_of(view), (kind, tch::Device::Cpu))?;
        self.read_into(view, &tensor)?;
        Ok(tensor)
    }

    fn kind(&self, name: &str, view: &TensorView<'_>) -> Result<Kind> {
        kind_of(view.dtype()).ok_or_else(|| CoreError::UnsupportedDType {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })
    }

    /// Reads a tensor's bytes from the file straight into `target`, a
    /// contiguous CPU tensor of exactly that many bytes (the caller checks).
    fn read_into(&self, view: &TensorView<'_>, target: &Tensor) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let data = view.data();
        if data.is_empty() {
            return Ok(());
        }
        // where the bytes are, from the header alone (no page is touched)
        let offset = data.as_ptr() as usize - self.map.bytes().as_ptr() as usize;
        // SAFETY: `target` is a contiguous CPU tensor of exactly `data.len()`
        // bytes (numel * element size, as the parser and the caller checked),
        // and nothing else uses it while it is written.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(target.data_ptr() as *mut u8, data.len()) };
        self.file
            .read_exact_at(bytes, offset as u64)
            .map_err(|e| CoreError::io(&self.path, e))
    }

    /// Reads one tensor onto the CPU in its stored dtype: over the file's
    /// bytes where it can be (the tensor keeps the file mapped), else a copy.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let tensors = self.tensors()?;
        let view = tensors.tensor(name).map_err(|e| self.header_error(e))?;
        match self.in_place(name, &view)? {
            Some(tensor) => Ok(tensor),
            None => self.read_view(name, &view),
        }
    }
}

fn shape_of(view: &TensorView<'_>) -> Vec<i64> {
    view.shape().iter().map(|&d| d as i64).collect()
}

/// The libtorch dtype of a safetensors dtype, where there is one.
pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
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
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        _ => return None,
    })
}
