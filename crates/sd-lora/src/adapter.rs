//! The adapter kinds and the weight update each makes.
//!
//! Every update is computed in f32 on the weight's device and has the
//! weight's shape. The formulas follow the tools that define them:
//! LoRA and LoCon as PEFT merges them (what diffusers' `fuse_lora` runs:
//! `up @ down`, a 3x3 conv LoRA as a convolution of the factors), LoCon's
//! Tucker core, LoHa and LoKr as AUTOMATIC1111 and LyCORIS rebuild them
//! (diffusers has no LoHa or LoKr for these models).

use tch::{Device, Kind, Tensor};

/// A factor of a LoKr Kronecker product: stored whole, or as `a @ b`.
#[derive(Debug)]
pub enum Factor {
    /// The matrix (or, for the second factor of a conv, the 4-d kernel).
    Whole(Tensor),
    /// A low-rank product `a @ b`.
    Product(Tensor, Tensor),
}

/// One module's adapter weights.
#[derive(Debug)]
pub enum Adapter {
    /// LoRA / LoCon: `up @ down`, with an optional Tucker core `mid`.
    Lora {
        /// (rank, in) or (rank, in, kh, kw).
        down: Tensor,
        /// (out, rank) or (out, rank, 1, 1).
        up: Tensor,
        /// (rank, rank, kh, kw).
        mid: Option<Tensor>,
    },
    /// LoHa: the Hadamard product of two low-rank products.
    LoHa {
        /// (out, rank), (rank, in) (with a Tucker core: (rank, out), (rank, in)).
        w1: (Tensor, Tensor),
        /// The second pair, shaped as the first.
        w2: (Tensor, Tensor),
        /// Tucker core of the first pair.
        t1: Option<Tensor>,
        /// Tucker core of the second pair.
        t2: Option<Tensor>,
    },
    /// LoKr: the Kronecker product of two factors.
    LoKr {
        /// The first factor (a, b).
        w1: Factor,
        /// The second factor (c, d) or (c, d, kh, kw).
        w2: Factor,
        /// Tucker core of the second factor.
        t2: Option<Tensor>,
    },
    /// A whole weight difference.
    Diff(Tensor),
}

/// Why factors do not fit: the factor's name and its shape.
pub type Misfit = (&'static str, Vec<i64>);

impl Adapter {
    /// The rank alpha divides: LoRA's inner dimension, LoHa's `w1_b` rows,
    /// LoKr's decomposed factor (none when both factors are whole).
    pub fn rank(&self) -> Option<i64> {
        match self {
            Adapter::Lora { down, .. } => down.size().first().copied(),
            Adapter::LoHa { w1, .. } => w1.1.size().first().copied(),
            Adapter::LoKr { w1, w2, .. } => match (w1, w2) {
                (Factor::Product(_, b), _) | (_, Factor::Product(_, b)) => {
                    b.size().first().copied()
                }
                _ => None,
            },
            Adapter::Diff(_) => None,
        }
    }

    /// alpha / rank, or 1 without an alpha or a rank (diffusers and PEFT
    /// take alpha = rank when a file stores none).
    pub fn alpha_scale(&self, alpha: Option<f64>) -> f64 {
        match (alpha, self.rank()) {
            (Some(alpha), Some(rank)) if rank > 0 => alpha / rank as f64,
            _ => 1.0,
        }
    }

    /// Checks the factors make an update of `target`'s shape, so that
    /// [`Adapter::delta`] cannot fail on shapes.
    pub fn check(&self, target: &[i64]) -> Result<(), Misfit> {
        let out = target.first().copied().unwrap_or(0);
        let numel: i64 = target.iter().product();
        let fan_in = if out > 0 { numel / out } else { 0 };
        let kernel = &target[2.min(target.len())..];
        let misfit = |name, t: &Tensor| Err((name, t.size()));
        match self {
            Adapter::Lora { down, up, mid } => {
                let (u, d) = (up.size(), down.size());
                if !matches!(u.len(), 2 | 4) || u[2..].iter().any(|&k| k != 1) || u[0] != out {
                    return misfit("up", up);
                }
                if !matches!(d.len(), 2 | 4) || d[0] != u[1] {
                    return misfit("down", down);
                }
                match mid {
                    None if flat_cols(&d) == fan_in => Ok(()),
                    None => misfit("down", down),
                    Some(m) => {
                        let s = m.size();
                        if s.len() != 4 || s[0] != u[1] || s[1] != d[0] || s[2..] != *kernel {
                            misfit("mid", m)
                        } else if flat_cols(&d) * s[2] * s[3] != fan_in {
                            misfit("down", down)
                        } else {
                            Ok(())
                        }
                    }
                }
            }
            Adapter::LoHa { w1, w2, t1, t2 } => {
                for (pair, core, names) in [
                    (w1, t1, ("hada_w1_a", "hada_w1_b")),
                    (w2, t2, ("hada_w2_a", "hada_w2_b")),
                ] {
                    check_product(pair, core.as_ref(), names, out, fan_in, kernel)?;
                }
                Ok(())
            }
            Adapter::LoKr { w1, w2, t2 } => {
                let (a, b) = factor_shape(w1, None, ("lokr_w1_a", "lokr_w1_b"))?;
                let (c, d) = factor_shape(w2, t2.as_ref(), ("lokr_w2_a", "lokr_w2_b"))?;
                if a * c != out || b * d != fan_in {
                    let w = match w1 {
                        Factor::Whole(w) | Factor::Product(w, _) => w,
                    };
                    return misfit("lokr_w1", w);
                }
                Ok(())
            }
            Adapter::Diff(diff)
                if diff.numel() as i64 == numel && diff.size().first() == Some(&out) =>
            {
                Ok(())
            }
            Adapter::Diff(diff) => misfit("diff", diff),
        }
    }

    /// The update for a weight of shape `target` on `device`, times
    /// `scale`, in f32. Call [`Adapter::check`] first.
    pub fn delta(
        &self,
        target: &[i64],
        scale: f64,
        device: Device,
    ) -> Result<Tensor, tch::TchError> {
        let f = |t: &Tensor| t.f_to_device(device)?.f_to_kind(Kind::Float);
        let kernel = &target[2.min(target.len())..];
        let update = match self {
            Adapter::Lora {
                down,
                up,
                mid: None,
            } if kernel.iter().any(|&k| k != 1) && down.dim() == 4 => {
                // PEFT's conv merge: the down kernels convolved with the 1x1 up
                let (down, up) = (f(down)?, f(up)?);
                let merged = down.f_transpose(0, 1)?.f_conv2d(
                    &up,
                    None::<Tensor>,
                    [1, 1],
                    [0, 0],
                    [1, 1],
                    1,
                )?;
                return merged
                    .f_transpose(0, 1)?
                    .f_mul_scalar(scale)?
                    .f_reshape(target);
            }
            Adapter::Lora {
                down,
                up,
                mid: None,
            } => {
                let product = f(up)?
                    .f_flatten(1, -1)?
                    .f_matmul(&f(down)?.f_flatten(1, -1)?)?;
                return product.f_mul_scalar(scale)?.f_reshape(target);
            }
            Adapter::Lora {
                down,
                up,
                mid: Some(mid),
            } => Tensor::f_einsum(
                "nmkl,in,mj->ijkl",
                &[
                    f(mid)?,
                    f(up)?.f_flatten(1, -1)?,
                    f(down)?.f_flatten(1, -1)?,
                ],
                None::<&[i64]>,
            )?,
            Adapter::LoHa { w1, w2, t1, t2 } => {
                let one = product(w1, t1.as_ref(), &f)?.f_reshape(target)?;
                one.f_mul(&product(w2, t2.as_ref(), &f)?.f_reshape(target)?)?
            }
            Adapter::LoKr { w1, w2, t2 } => {
                let w1 = whole(w1, None, &f)?;
                let w2 = whole(w2, t2.as_ref(), &f)?.f_flatten(1, -1)?;
                w1.f_kron(&w2)?
            }
            Adapter::Diff(diff) => f(diff)?,
        };
        update.f_reshape(target)?.f_mul_scalar(scale)
    }
}

/// Columns of a factor flattened to 2-d.
fn flat_cols(size: &[i64]) -> i64 {
    size[1..].iter().product()
}

/// LoHa's `a @ b` (or Tucker `t x a x b`) must make (out, fan_in).
fn check_product(
    (a, b): &(Tensor, Tensor),
    core: Option<&Tensor>,
    names: (&'static str, &'static str),
    out: i64,
    fan_in: i64,
    kernel: &[i64],
) -> Result<(), Misfit> {
    let (sa, sb) = (a.size(), b.size());
    if sa.len() != 2 {
        return Err((names.0, sa));
    }
    if sb.len() < 2 {
        return Err((names.1, sb));
    }
    match core {
        None if sa[0] == out && sa[1] == sb[0] && flat_cols(&sb) == fan_in => Ok(()),
        None if sa[0] != out || sa[1] != sb[0] => Err((names.0, sa)),
        None => Err((names.1, sb)),
        Some(t) => {
            let st = t.size();
            if st.len() != 4 || st[0] != sa[0] || st[1] != sb[0] || st[2..] != *kernel {
                Err(("tucker core", st))
            } else if sa[1] != out {
                Err((names.0, sa))
            } else if flat_cols(&sb) * st[2] * st[3] != fan_in {
                Err((names.1, sb))
            } else {
                Ok(())
            }
        }
    }
}

/// A LoKr factor's (rows, flattened columns).
fn factor_shape(
    factor: &Factor,
    core: Option<&Tensor>,
    names: (&'static str, &'static str),
) -> Result<(i64, i64), Misfit> {
    match (factor, core) {
        (Factor::Whole(w), _) if w.dim() >= 2 => Ok((w.size()[0], flat_cols(&w.size()))),
        (Factor::Whole(w), _) => Err((names.0, w.size())),
        (Factor::Product(a, b), None) => {
            let (sa, sb) = (a.size(), b.size());
            if sa.len() != 2 || sb.len() < 2 || sa[1] != sb[0] {
                return Err((names.0, sa));
            }
            Ok((sa[0], flat_cols(&sb)))
        }
        (Factor::Product(a, b), Some(t)) => {
            let (sa, sb, st) = (a.size(), b.size(), t.size());
            if st.len() != 4 || sa.len() != 2 || sb.len() != 2 || st[0] != sa[0] || st[1] != sb[0] {
                return Err(("lokr_t2", st));
            }
            Ok((sa[1], sb[1] * st[2] * st[3]))
        }
    }
}

type ToF32<'a> = dyn Fn(&Tensor) -> Result<Tensor, tch::TchError> + 'a;

/// LyCORIS' Tucker rebuild: core (r1, r2, k, l), a (r1, out), b (r2, in)
/// -> (out, in, k, l).
fn tucker(core: &Tensor, a: &Tensor, b: &Tensor, f: &ToF32<'_>) -> Result<Tensor, tch::TchError> {
    Tensor::f_einsum(
        "ijkl,jr,ip->prkl",
        &[f(core)?, f(b)?, f(a)?],
        None::<&[i64]>,
    )
}

/// LoHa's half: `a @ b`, or its Tucker form.
fn product(
    (a, b): &(Tensor, Tensor),
    core: Option<&Tensor>,
    f: &ToF32<'_>,
) -> Result<Tensor, tch::TchError> {
    match core {
        Some(t) => tucker(t, a, b, f),
        None => f(a)?.f_matmul(&f(b)?.f_flatten(1, -1)?),
    }
}

/// A LoKr factor as one matrix (or kernel).
fn whole(factor: &Factor, core: Option<&Tensor>, f: &ToF32<'_>) -> Result<Tensor, tch::TchError> {
    match (factor, core) {
        (Factor::Whole(w), _) => f(w),
        (Factor::Product(a, b), Some(t)) => tucker(t, a, b, f),
        (Factor::Product(a, b), None) => f(a)?.f_matmul(&f(b)?.f_flatten(1, -1)?),
    }
}
