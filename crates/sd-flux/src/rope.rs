//! FLUX's rotary position embedding: each token has three position ids
//! (text tokens all zeros; image tokens `(0, row, column)` of the packed
//! latent grid), each axis rotating its own slice of every head, as
//! diffusers' `FluxPosEmbed` and `apply_rotary_emb` compute them.

use tch::{Kind, Tensor};

/// (cos, sin), each (tokens, head width) f32, for `ids` (tokens, axes):
/// per axis the frequencies `1 / theta^(2i/dim)` in f64, the angles of the
/// positions at them in f64, each repeated for the pair it rotates.
pub fn tables(ids: &Tensor, axes_dims: &[i64], theta: f64) -> (Tensor, Tensor) {
    let device = ids.device();
    let pos = ids.to_kind(Kind::Float);
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for (axis, &dim) in axes_dims.iter().enumerate() {
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Double, device)) / dim as f64;
        // (Python's `1.0 / t` is `t.reciprocal() * 1.0`)
        let freqs = Tensor::scalar_tensor(theta, (Kind::Double, device))
            .pow(&exponents)
            .reciprocal();
        let angles = pos
            .select(1, axis as i64)
            .to_kind(Kind::Double)
            .outer(&freqs);
        let repeat = |t: Tensor| {
            let size = Some(2 * t.size()[1]);
            t.repeat_interleave_self_int(2, 1, size)
                .to_kind(Kind::Float)
        };
        cos.push(repeat(angles.cos()));
        sin.push(repeat(angles.sin()));
    }
    (Tensor::cat(&cos, -1), Tensor::cat(&sin, -1))
}

/// Rotates `x` (batch, tokens, heads, head width) by the tables: pairs
/// (real, imaginary) of consecutive values, in f32, back to `x`'s dtype.
pub fn apply(x: &Tensor, (cos, sin): (&Tensor, &Tensor)) -> Tensor {
    let cos = cos.unsqueeze(0).unsqueeze(2);
    let sin = sin.unsqueeze(0).unsqueeze(2);
    let mut pairs = x.size();
    let width = pairs.pop().expect("a head width");
    pairs.extend([width / 2, 2]);
    let pairs = x.reshape(pairs.as_slice());
    let (real, imag) = (pairs.select(-1, 0), pairs.select(-1, 1));
    let rotated = Tensor::stack(&[-imag, real], -1).flatten(3, -1);
    (x.to_kind(Kind::Float) * cos + rotated.to_kind(Kind::Float) * sin).to_kind(x.kind())
}
