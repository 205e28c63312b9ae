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

/// The block-quantized types [`dequantize`] takes (their block sizes in
/// bytes all differ).
pub const QUANTIZED: [GgmlType; 10] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

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

    /// The quantized type whose blocks are `bytes` long: every quantized
    /// type this crate dequantizes has a block size of its own, so a packed
    /// weight kept as (.., blocks, block bytes) says its type by its shape.
    pub fn from_block_bytes(bytes: u64) -> Option<GgmlType> {
        QUANTIZED.into_iter().find(|t| t.block().1 == bytes)
    }

    /// Whether values are stored in blocks with scales (not plain floats).
    pub fn is_quantized(self) -> bool {
        QUANTIZED.contains(&self)
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
    let mut out = vec![0f32; bytes.len() / size as usize * values as usize];
    dequantize_into(kind, bytes, &mut out, tensor)?;
    Ok(out)
}

/// [`dequantize`] into `out`, which holds exactly the values of `bytes`'
/// whole blocks (a layer dequantizing its weight on each use writes into
/// memory it already has).
pub fn dequantize_into(kind: GgmlType, bytes: &[u8], out: &mut [f32], tensor: &str) -> Result<()> {
    let (values, size) = kind.block();
    let (values, size) = (values as usize, size as usize);
    if bytes.len() % size != 0 || bytes.len() / size * values != out.len() {
        return Err(GgufError::Length {
            tensor: tensor.to_string(),
            bytes: bytes.len(),
            values: out.len(),
            kind: kind.name(),
        });
    }
    for (block, out) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(values)) {
        block_into(kind, block, out, tensor)?;
    }
    Ok(())
}

/// One block's values into `out` (exactly one block's worth).
fn block_into(kind: GgmlType, block: &[u8], out: &mut [f32], tensor: &str) -> Result<()> {
    let fill = |out: &mut [f32], values: &mut dyn Iterator<Item = f32>| {
        out.iter_mut().zip(values).for_each(|(o, v)| *o = v);
    };
    match kind {
        GgmlType::F32 => out[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
        GgmlType::F16 => out[0] = f16_at(block, 0),
        GgmlType::BF16 => {
            out[0] = f32::from_bits(u32::from(u16::from_le_bytes([block[0], block[1]])) << 16)
        }
        GgmlType::Q8_0 => {
            let d = f16_at(block, 0);
            fill(out, &mut block[2..].iter().map(|&q| f32::from(q as i8) * d));
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
            fill(
                out,
                &mut (0..32).map(|i| match m {
                    Some(m) => d * f32::from(nibble(i)) + m,
                    None => d * f32::from(nibble(i) as i8 - 8),
                }),
            );
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
            fill(
                out,
                &mut (0..32).map(|i| match m {
                    Some(m) => d * f32::from(value(i)) + m,
                    None => d * f32::from(value(i) as i8 - 16),
                }),
            );
        }
        GgmlType::Q2_K => fill(out, &mut crate::kquants::q2_k(block)),
        GgmlType::Q3_K => fill(out, &mut crate::kquants::q3_k(block)),
        GgmlType::Q4_K | GgmlType::Q5_K => fill(
            out,
            &mut crate::kquants::q45_k(block, kind == GgmlType::Q5_K),
        ),
        GgmlType::Q6_K => fill(out, &mut crate::kquants::q6_k(block)),
        GgmlType::Other(_) => {
            return Err(GgufError::Unsupported {
                tensor: tensor.to_string(),
                kind: kind.name(),
                supported: SUPPORTED,
            })
        }
    }
    Ok(())
}
