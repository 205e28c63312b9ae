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
/// `gguf.quants.dequantize` does, then converted (torch's rounding), on the
/// weight's device. On the CPU the blocks are decoded by `sd_gguf` over
/// libtorch's threads; elsewhere they are decoded on the host and moved.
/// Any other tensor is converted to `kind`.
pub fn unpack(t: &Tensor, kind: Kind) -> Tensor {
    let Some(ggml) = ggml_type(t) else {
        return t.to_kind(kind);
    };
    let bytes = t.to_device(Device::Cpu).contiguous();
    let values = Tensor::empty(logical_size(t), (Kind::Float, Device::Cpu));
    let len = bytes.numel();
    // SAFETY: both tensors are contiguous CPU tensors made or checked here,
    // `len` bytes and `values.numel()` f32s long, and nothing else holds
    // `values` yet.
    let (input, output) = unsafe {
        (
            std::slice::from_raw_parts(bytes.data_ptr() as *const u8, len),
            std::slice::from_raw_parts_mut(values.data_ptr() as *mut f32, values.numel()),
        )
    };
    decode(ggml, input, output);
    let values = values.to_device(t.device());
    match kind {
        Kind::Float => values,
        other => values.to_kind(other),
    }
}

/// Decodes whole blocks on up to libtorch's intra-op thread count.
fn decode(kind: GgmlType, input: &[u8], output: &mut [f32]) {
    let (per_block, block_bytes) = kind.block();
    let (per_block, block_bytes) = (per_block as usize, block_bytes as usize);
    let blocks = input.len() / block_bytes;
    let threads = (tch::get_num_threads().max(1) as usize).min(blocks.div_ceil(64).max(1));
    let chunk = blocks.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts = (input.chunks(chunk * block_bytes)).zip(output.chunks_mut(chunk * per_block));
        for (input, output) in parts {
            scope.spawn(move || {
                // lengths are whole blocks of a quantized type (pack checked)
                let decoded = sd_gguf::dequantize_into(kind, input, output, "packed weight");
                debug_assert!(decoded.is_ok(), "{decoded:?}");
            });
        }
    });
}
