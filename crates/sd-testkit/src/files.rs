//! Writing safetensors files in any dtype, 8-bit floats included.

use std::path::Path;

use safetensors::{tensor::TensorView, Dtype};
use tch::{Kind, Tensor};

fn dtype_of(kind: Kind) -> Dtype {
    match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Bool => Dtype::BOOL,
        Kind::Float8e4m3fn => Dtype::F8_E4M3,
        Kind::Float8e5m2 => Dtype::F8_E5M2,
        other => panic!("no safetensors dtype for {other:?}"),
    }
}

/// Writes `tensors` (CPU) to `path`, each in its own dtype.
pub fn write(path: &Path, tensors: &[(String, Tensor)]) {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let t = t.contiguous();
            let raw = t.view([-1]).view_dtype(Kind::Uint8);
            let data = Vec::<u8>::try_from(&raw).expect("bytes of a CPU tensor");
            let shape = t.size().iter().map(|&d| d as usize).collect();
            (name.clone(), dtype_of(t.kind()), shape, data)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = TensorView::new(*dtype, shape.clone(), data).expect("a consistent view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("the file is written");
}

/// `tensors` with every layer weight (`*.weight` of 2+ dims) rounded to the
/// 8-bit float `kind`: kept in it (`eight_bit`, as an fp8 checkpoint stores
/// them) or converted back to f32 (the same values at full width, the
/// copy an fp8 run is compared with); other tensors as they are.
pub fn fp8_copy(
    tensors: &[(String, Tensor)],
    kind: Kind,
    eight_bit: bool,
) -> Vec<(String, Tensor)> {
    (tensors.iter())
        .map(|(k, t)| match k.ends_with(".weight") && t.dim() >= 2 {
            true if eight_bit => (k.clone(), t.to_kind(kind)),
            true => (k.clone(), t.to_kind(kind).to_kind(Kind::Float)),
            false => (k.clone(), t.shallow_clone()),
        })
        .collect()
}
