//! Layer weights kept in GGUF's quantized blocks (Q8_0, Q4_K, ...), decoded
//! per use.
//!
//! A packed weight is a `Uint8` tensor shaped `(.., blocks, block bytes)`:
//! the weight's shape with its last dimension (the one GGML quantizes
//! along) cut into blocks. Every quantized type [`sd_gguf`] decodes has
//! blocks of a size of its own, so the shape says the type, and a packed
//! weight needs nothing beside it: it can sit in a `VarStore` variable,
//! be narrowed by rows (a fused q/k/v split) and move between devices.
//! Layers decode it with [`unpack`] each time they use it (through
//! [`crate::nn::upcast`]), so resident memory follows the file's size.

use half::{bf16, f16};
use sd_gguf::GgmlType;
use tch::{Device, Kind, Tensor};

/// The GGML type of a packed weight; `None` for any other tensor.
pub fn ggml_type(t: &Tensor) -> Option<GgmlType> {
    if t.kind() != Kind::Uint8 || t.dim() < 2 {
        return None;
    }
    GgmlType::from_block_bytes(*t.size().last()? as u64)
}

/// Whether `t` is a packed weight.
pub fn is_packed(t: &Tensor) -> bool {
    ggml_type(t).is_some()
}

/// The shape of the values `t` holds (its own shape for anything but a
/// packed weight).
pub fn logical_size(t: &Tensor) -> Vec<i64> {
    let mut size = t.size();
    if let Some(kind) = ggml_type(t) {
        size.pop();
        if let Some(blocks) = size.last_mut() {
            *blocks *= kind.block().0 as i64;
        }
    }
    size
}

/// The 1-d bytes of `kind` blocks as the packed weight of values `shape`;
/// `None` when the bytes are not those blocks (a quantized type and a shape
/// whose last dimension is whole blocks).
pub fn pack(bytes: &Tensor, shape: &[i64], kind: GgmlType) -> Option<Tensor> {
    let (per_block, block_bytes) = kind.block();
    let (per_block, block_bytes) = (per_block as i64, block_bytes as i64);
    let (&inner, outer) = shape.split_last()?;
    let numel: i64 = shape.iter().product();
    let fits = kind.is_quantized()
        && inner % per_block == 0
        && bytes.kind() == Kind::Uint8
        && bytes.size() == [numel / per_block * block_bytes];
    let packed_shape: Vec<i64> = (outer.iter().copied())
        .chain([inner / per_block.max(1), block_bytes])
        .collect();
    fits.then(|| bytes.view(packed_shape.as_slice()))
}

/// A packed weight's values in `kind`: decoded to f32 exactly as
/// `gguf.quants.dequantize` does, then rounded to f16/bf16 to nearest even
/// (torch's conversion), on the weight's device. On the CPU the blocks are
/// decoded by `sd_gguf` over libtorch's threads, a few blocks at a time
/// into a small buffer and rounded from there (no f32 copy of the whole
/// weight); on an accelerator by torch operations where the weight is
/// (`packed_ops`: the legacy types; the K-quants are decoded on the
/// host and moved). Any other tensor is converted to `kind`.
pub fn unpack(t: &Tensor, kind: Kind) -> Tensor {
    let Some(ggml) = ggml_type(t) else {
        return t.to_kind(kind);
    };
    if t.device() != Device::Cpu {
        if let Some(values) = unpack_with_torch_ops(t, kind) {
            return values;
        }
    }
    let bytes = t.to_device(Device::Cpu).contiguous();
    let direct = matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16);
    let out_kind = if direct { kind } else { Kind::Float };
    let values = Tensor::empty(logical_size(t), (out_kind, Device::Cpu));
    // SAFETY: `bytes` is a contiguous CPU tensor of `numel` bytes; `values`
    // a new contiguous CPU tensor of `numel` elements of `out_kind` that
    // nothing else holds yet.
    let input = unsafe { std::slice::from_raw_parts(bytes.data_ptr() as *const u8, bytes.numel()) };
    let (ptr, n) = (values.data_ptr(), values.numel());
    unsafe {
        match out_kind {
            Kind::Half => decode(
                ggml,
                input,
                std::slice::from_raw_parts_mut(ptr as *mut f16, n),
            ),
            Kind::BFloat16 => decode(
                ggml,
                input,
                std::slice::from_raw_parts_mut(ptr as *mut bf16, n),
            ),
            _ => decode(
                ggml,
                input,
                std::slice::from_raw_parts_mut(ptr as *mut f32, n),
            ),
        }
    }
    let values = values.to_device(t.device());
    match direct {
        true => values,
        false => values.to_kind(kind),
    }
}

/// A value type a packed weight decodes into, rounded from f32 as torch
/// rounds it (to nearest even).
trait Value: Copy + Send {
    fn from_f32(value: f32) -> Self;
}

impl Value for f32 {
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl Value for f16 {
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
}

impl Value for bf16 {
    /// c10's `round_to_nearest_even`, written so that it vectorises: NaN
    /// becomes 0x7FC0, anything else rounds to nearest even.
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        let bits = value.to_bits();
        let rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
        let bits = if value.is_nan() {
            0x7FC0
        } else {
            rounded as u16
        };
        bf16::from_bits(bits)
    }
}

/// Decodes whole blocks on up to libtorch's intra-op thread count, each
/// thread a few blocks at a time through a buffer that stays in cache.
fn decode<T: Value>(kind: GgmlType, input: &[u8], output: &mut [T]) {
    let (per_block, block_bytes) = kind.block();
    let (per_block, block_bytes) = (per_block as usize, block_bytes as usize);
    let blocks = input.len() / block_bytes;
    let threads = (tch::get_num_threads().max(1) as usize).min(blocks.div_ceil(64).max(1));
    let chunk = blocks.div_ceil(threads).max(1);
    // blocks decoded per round: 4096 values or one super-block
    let round = (4096 / per_block).max(1);
    std::thread::scope(|scope| {
        let parts = (input.chunks(chunk * block_bytes)).zip(output.chunks_mut(chunk * per_block));
        for (input, output) in parts {
            scope.spawn(move || {
                let mut buffer = vec![0f32; round * per_block];
                let rounds =
                    (input.chunks(round * block_bytes)).zip(output.chunks_mut(round * per_block));
                for (input, output) in rounds {
                    let buffer = &mut buffer[..output.len()];
                    // lengths are whole blocks of a quantized type (pack checked)
                    let decoded = sd_gguf::dequantize_into(kind, input, buffer, "packed weight");
                    debug_assert!(decoded.is_ok(), "{decoded:?}");
                    for (o, &v) in output.iter_mut().zip(buffer.iter()) {
                        *o = T::from_f32(v);
                    }
                }
            });
        }
    });
}

/// The torch-operation decoder, on any device (the one an accelerator's
/// weights take): `None` for the types it does not decode (the K-quants).
/// Public for tests that check it against [`unpack`]'s on the CPU.
pub fn unpack_with_torch_ops(t: &Tensor, kind: Kind) -> Option<Tensor> {
    let values = crate::packed_ops::decode(ggml_type(t)?, t)?;
    Some(values.reshape(logical_size(t)).to_kind(kind))
}
