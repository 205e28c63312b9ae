//! One memory-mapped weight file (safetensors, or GGUF as
//! stable-diffusion.cpp and ComfyUI-GGUF write it), and tensors that live in
//! it.
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
use safetensors::{Dtype, SafeTensors};
use sd_gguf::GgmlType;
use tch::{Kind, Tensor};

use crate::error::{CoreError, Result};
use crate::packed;

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

/// How a tensor is stored in its file.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Stored {
    /// Plain values of a dtype libtorch holds.
    Torch(Kind),
    /// GGML's quantized blocks (kept packed by a layer's weight, see
    /// [`crate::packed`]).
    Ggml(GgmlType),
    /// A dtype libtorch cannot hold (named as the file names it): an error
    /// when the tensor is read.
    Other(String),
}

/// One tensor of a mapped file, as its header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its name in the file.
    pub name: String,
    /// How its values are stored.
    pub stored: Stored,
    /// Its shape, outermost first (for GGML blocks, the values' shape).
    pub shape: Vec<i64>,
    /// Where its bytes are, from the start of the file, and how many.
    bytes: (usize, usize),
}

impl Entry {
    /// The shape of the tensor its bytes make before any layout: its own,
    /// or for GGML blocks, the 1-d bytes (laid out by [`crate::packed::pack`]).
    fn storage_shape(&self) -> Vec<i64> {
        match self.stored {
            Stored::Ggml(_) => vec![self.bytes.1 as i64],
            _ => self.shape.clone(),
        }
    }
}

/// One memory-mapped weight file: safetensors or GGUF, told apart by the
/// GGUF magic.
pub struct MappedFile {
    path: PathBuf,
    file: File,
    map: Arc<Map>,
    /// Where a private map starts, for tensors written through (taken once
    /// from the `MmapMut`; libtorch, not Rust, writes through it).
    writable: Option<usize>,
    gguf: bool,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl MappedFile {
    /// Opens and memory-maps `path`, and reads its header (checked against
    /// the file: a bad header is an error naming the file).
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
        let mut mapped = MappedFile {
            path,
            file,
            map: Arc::new(map),
            writable,
            gguf: false,
            entries: Vec::new(),
            by_name: HashMap::new(),
        };
        mapped.gguf = sd_gguf::is_gguf(mapped.map.bytes());
        mapped.entries = match mapped.gguf {
            true => mapped.gguf_entries()?,
            false => mapped.safetensors_entries()?,
        };
        mapped.by_name = (mapped.entries.iter().enumerate())
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(mapped)
    }

    fn safetensors_entries(&self) -> Result<Vec<Entry>> {
        let base = self.map.bytes().as_ptr() as usize;
        let mut entries: Vec<Entry> = (self.tensors()?.tensors().into_iter())
            .map(|(name, view)| Entry {
                stored: match kind_of(view.dtype()) {
                    Some(kind) => Stored::Torch(kind),
                    None => Stored::Other(format!("{:?}", view.dtype())),
                },
                shape: view.shape().iter().map(|&d| d as i64).collect(),
                bytes: (view.data().as_ptr() as usize - base, view.data().len()),
                name,
            })
            .collect();
        entries.sort_by_key(|e| e.bytes.0);
        Ok(entries)
    }

    fn gguf_entries(&self) -> Result<Vec<Entry>> {
        let directory =
            sd_gguf::Directory::parse(self.map.bytes()).map_err(|message| CoreError::Gguf {
                path: self.path.clone(),
                message,
            })?;
        Ok((directory.tensors.into_iter())
            .map(|t| Entry {
                stored: match t.kind {
                    GgmlType::F32 => Stored::Torch(Kind::Float),
                    GgmlType::F16 => Stored::Torch(Kind::Half),
                    GgmlType::BF16 => Stored::Torch(Kind::BFloat16),
                    kind if kind.is_quantized() => Stored::Ggml(kind),
                    other => Stored::Other(other.name()),
                },
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                bytes: (t.start, t.len),
                name: t.name,
            })
            .collect())
    }

    /// Every tensor of the file, in the order its bytes come.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The tensor `name`, if the file has it.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// Whether this is a GGUF file (not safetensors).
    pub fn is_gguf(&self) -> bool {
        self.gguf
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed safetensors header: every tensor's name, dtype, shape and
    /// bytes (an error for a GGUF file: see [`MappedFile::entries`]).
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        if self.gguf {
            return Err(CoreError::SafeTensors {
                path: self.path.clone(),
                message: "a GGUF file, where safetensors was expected".into(),
            });
        }
        SafeTensors::deserialize(self.map.bytes()).map_err(|e| self.header_error(e))
    }

    fn header_error(&self, e: safetensors::SafeTensorError) -> CoreError {
        CoreError::SafeTensors {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The header's `__metadata__` strings (empty when it has none, and for
    /// a GGUF file).
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        if self.gguf {
            return Ok(HashMap::new());
        }
        let (_, metadata) =
            SafeTensors::read_metadata(self.map.bytes()).map_err(|e| self.header_error(e))?;
        Ok(metadata.metadata().clone().unwrap_or_default())
    }

    /// Names and shapes of every tensor in the file.
    pub fn shapes(&self) -> Result<BTreeMap<String, Vec<i64>>> {
        Ok((self.entries.iter())
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect())
    }

    /// A tensor as a CPU tensor over the file's own bytes, in its stored
    /// dtype (GGML blocks packed, see [`crate::packed`]); `None` where that
    /// cannot be (a read-only map, data not aligned for its dtype, an empty
    /// tensor). Nothing is read until the tensor is used.
    pub fn in_place(&self, entry: &Entry) -> Result<Option<Tensor>> {
        let kind = self.kind(entry)?;
        let (offset, len) = entry.bytes;
        let Some(base) = self.writable else {
            return Ok(None);
        };
        if len == 0 || (base + offset) % kind.elt_size_in_bytes() != 0 {
            return Ok(None);
        }
        let owner = Box::new(Arc::clone(&self.map));
        let shape = entry.storage_shape();
        // SAFETY: the bytes lie inside the private writable map (the header
        // was checked against the file's length), aligned for `kind`; the
        // tensor holds the map alive, and writes through it only touch
        // private copies of its pages.
        let tensor = unsafe {
            crate::ffi::mapped::tensor_over(owner, (base + offset) as *mut u8, &shape, kind)
        }?;
        self.packed(entry, tensor).map(Some)
    }

    /// GGML blocks (a 1-d byte tensor) laid out as a packed weight.
    fn packed(&self, entry: &Entry, bytes: Tensor) -> Result<Tensor> {
        match entry.stored {
            Stored::Ggml(kind) => {
                packed::pack(&bytes, &entry.shape, kind).ok_or_else(|| CoreError::Gguf {
                    path: self.path.clone(),
                    message: format!("{}: blocks do not fit {:?}", entry.name, entry.shape),
                })
            }
            _ => Ok(bytes),
        }
    }

    /// One tensor, read from the file (not the map) into a new CPU tensor
    /// in its stored dtype (GGML blocks packed): where the bytes are
    /// converted or copied elsewhere right away, reading keeps the map's
    /// pages untouched (touched, they would stay resident as long as the map).
    pub fn read_entry(&self, entry: &Entry) -> Result<Tensor> {
        let kind = self.kind(entry)?;
        let tensor = Tensor::f_empty(entry.storage_shape(), (kind, tch::Device::Cpu))?;
        self.read_into(entry.bytes, &tensor)?;
        self.packed(entry, tensor)
    }

    fn kind(&self, entry: &Entry) -> Result<Kind> {
        match &entry.stored {
            Stored::Torch(kind) => Ok(*kind),
            Stored::Ggml(_) => Ok(Kind::Uint8),
            Stored::Other(dtype) => Err(CoreError::UnsupportedDType {
                path: self.path.clone(),
                name: entry.name.clone(),
                dtype: dtype.clone(),
            }),
        }
    }

    /// Reads a tensor's bytes from the file straight into `target`, a
    /// contiguous CPU tensor of exactly that many bytes (the caller checks).
    fn read_into(&self, (offset, len): (usize, usize), target: &Tensor) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `target` is a contiguous CPU tensor of exactly `len` bytes
        // (numel * element size, as the header and the caller checked), and
        // nothing else uses it while it is written.
        let bytes = unsafe { std::slice::from_raw_parts_mut(target.data_ptr() as *mut u8, len) };
        self.file
            .read_exact_at(bytes, offset as u64)
            .map_err(|e| CoreError::io(&self.path, e))
    }

    /// Reads one tensor onto the CPU: over the file's bytes where it can be
    /// (the tensor keeps the file mapped), else a copy; GGML blocks are
    /// dequantized to f32.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let entry = self.entry(name).ok_or_else(|| CoreError::SafeTensors {
            path: self.path.clone(),
            message: format!("no tensor '{name}'"),
        })?;
        let tensor = match self.in_place(entry)? {
            Some(tensor) => tensor,
            None => self.read_entry(entry)?,
        };
        Ok(match entry.stored {
            Stored::Ggml(_) => packed::unpack(&tensor, Kind::Float),
            _ => tensor,
        })
    }
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
