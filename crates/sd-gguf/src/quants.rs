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
    let sizes = (size, values);
    match kind {
        GgmlType::F32 => each_block(bytes, out, sizes, |b, o| {
            o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
        GgmlType::F16 => each_block(bytes, out, sizes, |b, o| o[0] = f16_at(b, 0)),
        GgmlType::BF16 => each_block(bytes, out, sizes, |b, o| {
            o[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }),
        GgmlType::Q8_0 => each_block(bytes, out, sizes, q8_0),
        GgmlType::Q4_0 => each_block(bytes, out, sizes, q4_0),
        GgmlType::Q4_1 => each_block(bytes, out, sizes, q4_1),
        GgmlType::Q5_0 => each_block(bytes, out, sizes, q5_0),
        GgmlType::Q5_1 => each_block(bytes, out, sizes, q5_1),
        GgmlType::Q2_K => each_block(bytes, out, sizes, |b, o| fill(o, crate::kquants::q2_k(b))),
        GgmlType::Q3_K => each_block(bytes, out, sizes, |b, o| fill(o, crate::kquants::q3_k(b))),
        GgmlType::Q4_K => each_block(bytes, out, sizes, |b, o| {
            fill(o, crate::kquants::q45_k(b, false))
        }),
        GgmlType::Q5_K => each_block(bytes, out, sizes, |b, o| {
            fill(o, crate::kquants::q45_k(b, true))
        }),
        GgmlType::Q6_K => each_block(bytes, out, sizes, |b, o| fill(o, crate::kquants::q6_k(b))),
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

/// Runs `decode` over every block (generic, so each type's loop is its own
/// and the decoder inlines into it).
fn each_block<F: Fn(&[u8], &mut [f32])>(
    bytes: &[u8],
    out: &mut [f32],
    (size, values): (usize, usize),
    decode: F,
) {
    for (block, out) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(values)) {
        decode(block, out);
    }
}

// The decoders below are the inner loops of every layer that decodes its
// weight per use: straight loops over the two halves of a block (value i
// is the low nibble of byte i, value i + 16 its high nibble), which the
// compiler vectorises; each value is the same f32 operations as gguf's.

fn fill(out: &mut [f32], values: impl Iterator<Item = f32>) {
    out.iter_mut().zip(values).for_each(|(o, v)| *o = v);
}

/// Q8_0: d, 32 signed bytes.
fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// Q4_0: d, 16 bytes of nibbles offset by 8.
fn q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let (low, high) = out.split_at_mut(16);
    for ((l, h), &q) in low.iter_mut().zip(high).zip(&block[2..18]) {
        *l = d * f32::from((q & 0x0F) as i8 - 8);
        *h = d * f32::from((q >> 4) as i8 - 8);
    }
}

/// Q4_1: d, m, 16 bytes of nibbles.
fn q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    let (low, high) = out.split_at_mut(16);
    for ((l, h), &q) in low.iter_mut().zip(high).zip(&block[4..20]) {
        *l = d * f32::from(q & 0x0F) + m;
        *h = d * f32::from(q >> 4) + m;
    }
}

/// The 5-bit values of a Q5 block's fifth bits `qh` and nibbles `qs`.
fn five_bit(qh: &[u8], qs: &[u8], each: impl Fn(u8) -> f32, out: &mut [f32]) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let (low, high) = out.split_at_mut(16);
    for (i, ((l, h), &q)) in low.iter_mut().zip(high).zip(qs).enumerate() {
        *l = each((q & 0x0F) | ((((qh >> i) & 1) as u8) << 4));
        *h = each((q >> 4) | ((((qh >> (i + 16)) & 1) as u8) << 4));
    }
}

/// Q5_0: d, the fifth bits, 16 bytes of nibbles; values offset by 16.
fn q5_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    five_bit(
        &block[2..6],
        &block[6..22],
        |v| d * f32::from(v as i8 - 16),
        out,
    );
}

/// Q5_1: d, m, the fifth bits, 16 bytes of nibbles.
fn q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    five_bit(&block[4..8], &block[8..24], |v| d * f32::from(v) + m, out);
}
