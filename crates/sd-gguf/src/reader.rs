//! The GGUF container (versions 2 and 3, little-endian): header, metadata,
//! tensor directory, aligned data. Every count, length, shape and offset is
//! checked against the file before it is used, so a truncated or lying file
//! is one error naming what is wrong, never a panic or a read out of bounds.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{GgufError, Result};
use crate::quants::{dequantize, GgmlType};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// `f32` or `f64`.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values of one type.
    Array(Vec<Value>),
}

/// One tensor of the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (the original LDM/BFL/Stability key).
    pub name: String,
    /// Its shape, outermost first (as torch has it; GGUF stores it reversed).
    pub shape: Vec<u64>,
    /// Its type.
    pub kind: GgmlType,
    /// Where its bytes are, from the start of the file.
    pub start: usize,
    /// How many bytes it has.
    pub len: usize,
}

/// A memory-mapped GGUF file with its directory read and checked.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
}

/// Reads little-endian values off the front of a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("{what} at byte {} runs past the end", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min` bytes each: never more than the
    /// bytes left could hold (a lying count allocates nothing).
    fn count(&mut self, min: usize, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        match n.checked_mul(min.max(1) as u64) {
            Some(bytes) if bytes <= left => Ok(n as usize),
            _ => Err(format!(
                "{what} {n} at byte {} is more than the file holds",
                self.at - 8
            )),
        }
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, kind: u32, depth: u32) -> std::result::Result<Value, String> {
        Ok(match kind {
            0 => Value::U64(u64::from(self.array::<1>("u8")?[0])),
            1 => Value::I64(i64::from(self.array::<1>("i8")?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.array("u16")?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.array("i16")?))),
            4 => Value::U64(u64::from(self.u32("u32")?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.array("i32")?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.array("f32")?))),
            7 => Value::Bool(self.array::<1>("bool")?[0] != 0),
            8 => Value::String(self.string("string length")?),
            9 if depth < 4 => {
                let inner = self.u32("array type")?;
                let n = self.count(1, "array length")?;
                let items = (0..n).map(|_| self.value(inner, depth + 1));
                Value::Array(items.collect::<std::result::Result<_, _>>()?)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            other => {
                return Err(format!(
                    "unknown metadata value type {other} at byte {}",
                    self.at
                ))
            }
        })
    }
}

impl GgufFile {
    /// Maps `path` and reads its header, metadata and tensor directory.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: read-only; a file changed underneath while mapped is
        // outside what any reader guards.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (metadata, tensors) = parse(&map).map_err(|message| GgufError::Format {
            path: path.clone(),
            message,
        })?;
        Ok(GgufFile {
            path,
            map,
            metadata,
            tensors,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A tensor's bytes, as stored.
    pub fn bytes(&self, tensor: &TensorInfo) -> &[u8] {
        // (checked against the map's length when the directory was read)
        &self.map[tensor.start..tensor.start + tensor.len]
    }

    /// A tensor's values as f32, dequantized as `gguf.quants.dequantize` does.
    pub fn dequantize(&self, tensor: &TensorInfo) -> Result<Vec<f32>> {
        dequantize(tensor.kind, self.bytes(tensor), &tensor.name)
    }
}

/// A GGUF file's metadata and tensor directory, read from its bytes (for a
/// caller that maps the file itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Directory {
    /// The metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensors, in file order, every one checked to lie inside `bytes`.
    pub tensors: Vec<TensorInfo>,
}

impl Directory {
    /// Reads the header of a whole GGUF file's `bytes`; the error says what
    /// is wrong and where (without the file's name, which the caller has).
    pub fn parse(bytes: &[u8]) -> std::result::Result<Directory, String> {
        let (metadata, tensors) = parse(bytes)?;
        Ok(Directory { metadata, tensors })
    }
}

/// Whether `bytes` start as a GGUF file does.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
}

type Parsed = (BTreeMap<String, Value>, Vec<TensorInfo>);

fn parse(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let mut c = Cursor { bytes, at: 0 };
    if c.take(4, "the magic").ok() != Some(b"GGUF".as_slice()) {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} (this reader takes 2 and 3, little-endian)"
        ));
    }
    // each tensor entry and metadata pair is at least 8 + 4 (+ ...) bytes
    let tensor_count = c.count(24, "tensor count")?;
    let kv_count = c.count(12, "metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = c.string("metadata key")?;
        let kind = c.u32("metadata type")?;
        let value = c.value(kind, 0).map_err(|e| format!("{key}: {e}"))?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(Value::U64(a)) if *a > 0 && a.is_power_of_two() && *a <= 1 << 20 => *a as usize,
        Some(other) => return Err(format!("general.alignment {other:?} is not a power of two")),
    };
    let mut entries = Vec::with_capacity(tensor_count);
    for _ in 0..tensor_count {
        let name = c.string("tensor name")?;
        let dims = c
            .u32("dimension count")
            .map_err(|e| format!("{name}: {e}"))?;
        if dims == 0 || dims > 4 {
            return Err(format!("{name}: {dims} dimensions (1 to 4 expected)"));
        }
        let mut shape = (0..dims)
            .map(|_| c.u64("a dimension"))
            .collect::<std::result::Result<Vec<u64>, _>>()
            .map_err(|e| format!("{name}: {e}"))?;
        shape.reverse();
        let id = c.u32("tensor type").map_err(|e| format!("{name}: {e}"))?;
        let kind =
            GgmlType::from_id(id).ok_or_else(|| format!("{name}: unknown GGML type {id}"))?;
        let offset = c.u64("tensor offset").map_err(|e| format!("{name}: {e}"))?;
        entries.push((name, shape, kind, offset));
    }
    let data = c.at.div_ceil(alignment) * alignment;
    let tensors = entries
        .into_iter()
        .map(|(name, shape, kind, offset)| {
            locate(name, shape, kind, offset, (data, alignment), bytes.len())
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((metadata, tensors))
}

/// A directory entry checked against the file: a whole number of blocks
/// per row, an aligned offset, bytes inside the file.
fn locate(
    name: String,
    shape: Vec<u64>,
    kind: GgmlType,
    offset: u64,
    (data, alignment): (usize, usize),
    file_len: usize,
) -> std::result::Result<TensorInfo, String> {
    let (per_block, block_bytes) = kind.block();
    let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    let inner = shape.last().copied().unwrap_or(1);
    let len = match numel {
        Some(n) if inner % per_block == 0 => (n / per_block).checked_mul(block_bytes),
        Some(_) => {
            return Err(format!(
                "{name}: rows of {inner} values are not whole {} blocks of {per_block}",
                kind.name()
            ))
        }
        None => None,
    };
    let start = (data as u64).checked_add(offset);
    let end = match (start, len) {
        (Some(s), Some(l)) => s.checked_add(l),
        _ => None,
    };
    match (start, len, end) {
        (Some(start), Some(len), Some(end))
            if end <= file_len as u64 && offset % alignment as u64 == 0 =>
        {
            Ok(TensorInfo {
                name,
                shape,
                kind,
                start: start as usize,
                len: len as usize,
            })
        }
        (_, _, Some(end)) if end <= file_len as u64 => Err(format!(
            "{name}: offset {offset} is not a multiple of the alignment {alignment}"
        )),
        _ => Err(format!(
            "{name}: {:?} {} at offset {offset} runs past the end of the file ({file_len} bytes)",
            shape,
            kind.name()
        )),
    }
}
