//! GGML's tensor types and their dequantization to f32, operation for
//! operation as `gguf.quants.dequantize` (the `gguf` Python package)
//! computes it in numpy's f32: the same bits.

use half::f16;

use crate::error::{GgufError, Result};

/// A GGML tensor type, by its number in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(non_camel_case_types)] // ggml's names
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: an f16 scale, 32 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 32 4-bit values.
    Q4_1,
    /// Blocks of 32: an f16 scale, 32 5-bit values offset by 16.
    Q5_0,
    /// Blocks of 32: f16 scale and minimum, 32 5-bit values.
    Q5_1,
    /// Blocks of 32: an f16 scale, 32 signed bytes.
    Q8_0,
    /// Super-blocks of 256: 2-bit values, 4-bit scales and minimums.
    Q2_K,
    /// Super-blocks of 256: 3-bit values, 6-bit scales.
    Q3_K,
    /// Super-blocks of 256: 4-bit values, 6-bit scales and minimums.
    Q4_K,
    /// Super-blocks of 256: 5-bit values, 6-bit scales and minimums.
    Q5_K,
    /// Super-blocks of 256: 6-bit values, 8-bit scales.
    Q6_K,
    /// A type this reader knows the size of but does not dequantize.
    Other(u32),
}

/// The types [`dequantize`] takes, for messages.
pub const SUPPORTED: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

impl GgmlType {
    /// The type of GGML number `id`, if the reader knows its block size.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            // Q8_1 and Q8_K (intermediate types): sizes known, not dequantized
            9 | 15 => GgmlType::Other(id),
            _ => return None,
        })
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2_K => (256, 84),
            GgmlType::Q3_K => (256, 110),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q5_K => (256, 176),
            GgmlType::Q6_K => (256, 210),
            GgmlType::Other(9) => (32, 36),
            GgmlType::Other(_) => (256, 292),
        }
    }

    /// The type's name as gguf writes it.
    pub fn name(self) -> String {
        match self {
            GgmlType::Other(9) => "Q8_1".into(),
            GgmlType::Other(_) => "Q8_K".into(),
            other => format!("{other:?}"),
        }
    }
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The f32 values of `bytes`, whole blocks of `kind` (the caller checks
/// the length is a multiple of the block size); `tensor` names errors.
pub fn dequantize(kind: GgmlType, bytes: &[u8], tensor: &str) -> Result<Vec<f32>> {
    let (values, size) = kind.block();
    let (values, size) = (values as usize, size as usize);
    let mut out = Vec::with_capacity(bytes.len() / size * values);
    for block in bytes.chunks_exact(size) {
        match kind {
            GgmlType::F32 => out.push(f32::from_le_bytes([block[0], block[1], block[2], block[3]])),
            GgmlType::F16 => out.push(f16_at(block, 0)),
            GgmlType::BF16 => out.push(f32::from_bits(
                u32::from(u16::from_le_bytes([block[0], block[1]])) << 16,
            )),
            GgmlType::Q8_0 => {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let d = f16_at(block, 0);
                let (m, qs) = match kind {
                    GgmlType::Q4_1 => (Some(f16_at(block, 2)), &block[4..]),
                    _ => (None, &block[2..]),
                };
                let nibble = |i: usize| match i < 16 {
                    true => qs[i] & 0x0F,
                    false => qs[i - 16] >> 4,
                };
                out.extend((0..32).map(|i| match m {
                    Some(m) => d * f32::from(nibble(i)) + m,
                    None => d * f32::from(nibble(i) as i8 - 8),
                }));
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let d = f16_at(block, 0);
                let (m, rest) = match kind {
                    GgmlType::Q5_1 => (Some(f16_at(block, 2)), &block[4..]),
                    _ => (None, &block[2..]),
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..];
                let value = |i: usize| {
                    let low = match i < 16 {
                        true => qs[i] & 0x0F,
                        false => qs[i - 16] >> 4,
                    };
                    low | ((((qh >> i) & 1) as u8) << 4)
                };
                out.extend((0..32).map(|i| match m {
                    Some(m) => d * f32::from(value(i)) + m,
                    None => d * f32::from(value(i) as i8 - 16),
                }));
            }
            GgmlType::Q2_K => out.extend(crate::kquants::q2_k(block)),
            GgmlType::Q3_K => out.extend(crate::kquants::q3_k(block)),
            GgmlType::Q4_K | GgmlType::Q5_K => {
                out.extend(crate::kquants::q45_k(block, kind == GgmlType::Q5_K))
            }
            GgmlType::Q6_K => out.extend(crate::kquants::q6_k(block)),
            GgmlType::Other(_) => {
                return Err(GgufError::Unsupported {
                    tensor: tensor.to_string(),
                    kind: kind.name(),
                    supported: SUPPORTED,
                })
            }
        }
    }
    Ok(out)
}
