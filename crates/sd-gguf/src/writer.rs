//! Writing GGUF v3 files, one tensor at a time: the directory is written
//! from the tensors' shapes and types first, then each tensor's bytes as
//! the caller makes them, so a model is converted without holding it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{GgufError, Result};
use crate::quants::GgmlType;
use crate::reader::Value;

const ALIGNMENT: u64 = 32;

/// A tensor to write: its name, shape (outermost first) and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// Its name.
    pub name: String,
    /// Its shape, outermost first (as torch has it).
    pub shape: Vec<u64>,
    /// Its type.
    pub kind: GgmlType,
}

impl TensorPlan {
    /// The bytes its values take in its type; `None` when its rows are not
    /// whole blocks.
    pub fn bytes(&self) -> Option<u64> {
        let (per_block, block_bytes) = self.kind.block();
        let numel: u64 = self.shape.iter().product();
        let inner = *self.shape.last()?;
        (inner % per_block == 0).then_some(numel / per_block * block_bytes)
    }
}

/// Writes `tensors` with `metadata` to `path`; `data(i)` gives tensor `i`'s
/// bytes when its turn comes (exactly [`TensorPlan::bytes`] of them).
pub fn write(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorPlan],
    data: &mut dyn FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |message: String| GgufError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut header = Vec::new();
    header.extend(b"GGUF");
    header.extend(3u32.to_le_bytes());
    header.extend((tensors.len() as u64).to_le_bytes());
    header.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut header, key);
        self::value(&mut header, value).map_err(|m| format(format!("{key}: {m}")))?;
    }
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let size = tensor.bytes().ok_or_else(|| {
            format(format!(
                "{}: rows of {:?} are not whole {} blocks",
                tensor.name,
                tensor.shape.last(),
                tensor.kind.name()
            ))
        })?;
        string(&mut header, &tensor.name);
        header.extend((tensor.shape.len() as u32).to_le_bytes());
        for dim in tensor.shape.iter().rev() {
            header.extend(dim.to_le_bytes());
        }
        header.extend(id(tensor.kind).to_le_bytes());
        header.extend(offset.to_le_bytes());
        sizes.push(size);
        offset += size.div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    header.resize(
        (header.len() as u64).div_ceil(ALIGNMENT) as usize * ALIGNMENT as usize,
        0,
    );
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    out.write_all(&header).map_err(io)?;
    for (index, (tensor, size)) in tensors.iter().zip(sizes).enumerate() {
        let bytes = data(index)?;
        if bytes.len() as u64 != size {
            return Err(format(format!(
                "{}: {} bytes given for {size}",
                tensor.name,
                bytes.len()
            )));
        }
        out.write_all(&bytes).map_err(io)?;
        let padding = size.div_ceil(ALIGNMENT) * ALIGNMENT - size;
        out.write_all(&vec![0u8; padding as usize]).map_err(io)?;
    }
    out.flush().map_err(io)
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text.as_bytes());
}

/// A metadata value with its type tag (integers as u64/i64, floats as f64).
fn value(out: &mut Vec<u8>, value: &Value) -> std::result::Result<(), String> {
    match value {
        Value::U64(v) => {
            out.extend(10u32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Value::I64(v) => {
            out.extend(11u32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Value::F64(v) => {
            out.extend(12u32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Value::Bool(v) => {
            out.extend(7u32.to_le_bytes());
            out.push(u8::from(*v));
        }
        Value::String(v) => {
            out.extend(8u32.to_le_bytes());
            string(out, v);
        }
        Value::Array(_) => return Err("arrays are not written".into()),
    }
    Ok(())
}

/// GGML's number for a type.
fn id(kind: GgmlType) -> u32 {
    match kind {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q5_1 => 7,
        GgmlType::Q8_0 => 8,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11,
        GgmlType::Q4_K => 12,
        GgmlType::Q5_K => 13,
        GgmlType::Q6_K => 14,
        GgmlType::BF16 => 30,
        GgmlType::Other(id) => id,
    }
}
