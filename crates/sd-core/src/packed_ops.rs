//! Decoding packed weights with torch operations, where they live: for a
//! weight on an accelerator, which then never crosses to the host. The same
//! f32 operations as `gguf.quants.dequantize` (and [`sd_gguf`]), one
//! elementwise op at a time, so the values are the same bits. The legacy
//! block types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1); the K-quants are decoded on
//! the host ([`crate::packed::unpack`]).

use sd_gguf::GgmlType;
use tch::{Kind, Tensor};

/// `blocks` (`(.., n, block bytes)`, `Uint8`) decoded to f32 `(.., n, 32)`;
/// `None` for a type not decoded here.
pub(crate) fn decode(kind: GgmlType, blocks: &Tensor) -> Option<Tensor> {
    let field = |at: i64, len: i64| blocks.narrow(-1, at, len);
    // an f16 scale (or minimum) at byte `at`, as f32 (.., n, 1)
    let half = |at: i64| {
        field(at, 2)
            .contiguous()
            .view_dtype(Kind::Half)
            .to_kind(Kind::Float)
    };
    Some(match kind {
        GgmlType::Q8_0 => {
            let q = field(2, 32)
                .contiguous()
                .view_dtype(Kind::Int8)
                .to_kind(Kind::Float);
            q * half(0)
        }
        GgmlType::Q4_0 => (nibbles(&field(2, 16)) - 8.0) * half(0),
        GgmlType::Q4_1 => nibbles(&field(4, 16)) * half(0) + half(2),
        GgmlType::Q5_0 => (five_bits(&field(2, 4), &field(6, 16)) - 16.0) * half(0),
        GgmlType::Q5_1 => five_bits(&field(4, 4), &field(8, 16)) * half(0) + half(2),
        _ => return None,
    })
}

/// 16 bytes of nibbles as 32 values (.., n, 32), as f32: byte i's low
/// nibble is value i, its high nibble value i + 16.
fn nibbles(bytes: &Tensor) -> Tensor {
    let low = bytes.bitwise_and(0x0F);
    let high = bytes.bitwise_right_shift_tensor_scalar(4);
    Tensor::cat(&[low, high], -1).to_kind(Kind::Float)
}

/// The 5-bit values of a Q5 block: nibbles, and bit i of the u32 `high`
/// (little-endian) as value i's fifth bit.
fn five_bits(high: &Tensor, low: &Tensor) -> Tensor {
    let bits = high.contiguous().view_dtype(Kind::Int).to_kind(Kind::Int64);
    let shifts = Tensor::arange(32, (Kind::Int64, high.device()));
    let fifth = bits.bitwise_right_shift(&shifts).bitwise_and(1) * 16;
    nibbles(low) + fifth.to_kind(Kind::Float)
}
