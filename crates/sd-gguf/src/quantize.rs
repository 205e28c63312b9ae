//! Quantizing f32 values into GGML blocks, operation for operation as
//! `gguf.quants.quantize` (the `gguf` Python package) computes it in
//! numpy's f32, so a file written here has the bytes that package writes.
//! It quantizes no K-quant (neither does that package).

use half::{bf16, f16};

use crate::error::{GgufError, Result};
use crate::quants::GgmlType;

/// The types [`quantize`] writes.
pub const WRITABLE: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// [`WRITABLE`]'s names, for messages.
pub const WRITABLE_NAMES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0";

/// `values` (whole blocks of `kind`) as `kind`'s bytes; `tensor` names
/// errors.
pub fn quantize(kind: GgmlType, values: &[f32], tensor: &str) -> Result<Vec<u8>> {
    let (per_block, block_bytes) = kind.block();
    let (per_block, block_bytes) = (per_block as usize, block_bytes as usize);
    if values.len() % per_block != 0 {
        return Err(GgufError::Length {
            tensor: tensor.to_string(),
            bytes: 0,
            values: values.len(),
            kind: kind.name(),
        });
    }
    let mut out = Vec::with_capacity(values.len() / per_block * block_bytes);
    for block in values.chunks_exact(per_block) {
        match kind {
            GgmlType::F32 => out.extend(block[0].to_le_bytes()),
            GgmlType::F16 => out.extend(f16::from_f32(block[0]).to_le_bytes()),
            GgmlType::BF16 => out.extend(bf16::from_f32(block[0]).to_le_bytes()),
            GgmlType::Q8_0 => q8_0(block, &mut out),
            GgmlType::Q4_0 | GgmlType::Q5_0 => symmetric(block, kind == GgmlType::Q5_0, &mut out),
            GgmlType::Q4_1 | GgmlType::Q5_1 => with_min(block, kind == GgmlType::Q5_1, &mut out),
            _ => {
                return Err(GgufError::Unsupported {
                    tensor: tensor.to_string(),
                    kind: kind.name(),
                    supported: WRITABLE_NAMES,
                })
            }
        }
    }
    Ok(out)
}

/// numpy's `np.where(d == 0, 0, 1 / d)`.
fn inverse(d: f32) -> f32 {
    match d == 0.0 {
        true => 0.0,
        false => 1.0 / d,
    }
}

/// gguf's `np_roundf` (ggml's `roundf`: halves away from zero).
fn roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    match n {
        n if n > 0.0 => b,
        n if n < 0.0 => -b,
        _ => 0.0 * b,
    }
}

fn q8_0(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(block.iter().map(|&v| roundf(v * id) as i8 as u8));
}

/// The value of largest magnitude (the first of equals, as `argmax`).
fn signed_max(block: &[f32]) -> f32 {
    let mut best = block[0];
    for &v in &block[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// Q4_0 (or Q5_0, `five`): `d = max / -8` (-16), values offset by 8 (16).
fn symmetric(block: &[f32], five: bool, out: &mut Vec<u8>) {
    let (levels, top) = if five { (-16.0, 31) } else { (-8.0, 15) };
    let d = signed_max(block) / levels;
    let id = inverse(d);
    let offset = -levels + 0.5;
    let q: Vec<u8> = (block.iter())
        .map(|&v| ((v * id + offset).trunc() as u8).min(top))
        .collect();
    out.extend(f16::from_f32(d).to_le_bytes());
    pack(&q, five, out);
}

/// Q4_1 (or Q5_1, `five`): scale and minimum, values from 0.
fn with_min(block: &[f32], five: bool, out: &mut Vec<u8>) {
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let (steps, top) = if five { (31.0, 31) } else { (15.0, 15) };
    let d = (max - min) / steps;
    let id = inverse(d);
    let q: Vec<u8> = (block.iter())
        .map(|&v| (((v - min) * id + 0.5).trunc() as u8).min(top))
        .collect();
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(f16::from_f32(min).to_le_bytes());
    pack(&q, five, out);
}

/// 32 values as (for 5 bits) the fifth bits' u32, then low nibbles: value
/// i in the low half of byte i, value i + 16 in its high half.
fn pack(q: &[u8], five: bool, out: &mut Vec<u8>) {
    if five {
        let high = (q.iter().enumerate()).fold(0u32, |h, (i, &v)| h | (u32::from(v >> 4) << i));
        out.extend(high.to_le_bytes());
    }
    out.extend((0..16).map(|i| (q[i] & 0x0F) | (q[i + 16] << 4)));
}
