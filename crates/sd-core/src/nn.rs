//! The basic layers, with diffusers/transformers parameter names.
//!
//! Parameters are created *uninitialised* (`Tensor::empty`): every model
//! here is filled from a weight file right after it is built, so there is
//! nothing to gain from a random init, and a full-size model can be built
//! (for example to check its weight names) without touching its memory.
//! Call [`init_for_training`] to give fresh parameters PyTorch-style values.

use tch::{nn::Path, Kind, Tensor};

/// Whether `kind` is one of the 8-bit float formats a weight may be kept in
/// (an fp8 file's weights, used in place: `F8_E4M3`, `F8_E5M2`).
pub fn is_fp8(kind: Kind) -> bool {
    matches!(kind, Kind::Float8e4m3fn | Kind::Float8e5m2)
}

/// Whether `weight` is kept narrower than a layer computes in: in 8 bits
/// (fp8) or in GGML's quantized blocks ([`crate::packed`]).
pub fn is_kept_narrow(weight: &Tensor) -> bool {
    is_fp8(weight.kind()) || crate::packed::is_packed(weight)
}

/// `weight` as a layer computes with it: one kept in 8 bits upcast to
/// `kind` for this call (torch's own conversion, so bit for bit what
/// `weight.to(kind)` gives), one kept in GGML blocks decoded
/// ([`crate::packed::unpack`]), any other as it is.
pub fn upcast(weight: &Tensor, kind: Kind) -> Tensor {
    match is_kept_narrow(weight) {
        true => crate::packed::unpack(weight, kind),
        false => weight.shallow_clone(),
    }
}

/// A new parameter `name` of `shape` under `vs`, on its device and dtype.
pub fn param(vs: &Path<'_>, name: &str, shape: &[i64]) -> Tensor {
    vs.add(name, Tensor::empty(shape, (vs.kind(), vs.device())), true)
}

/// A fully connected layer, `y = x W^T + b`.
#[derive(Debug)]
pub struct Linear {
    /// The weight, under `weight`.
    pub weight: Tensor,
    /// The bias, under `bias`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// The layer under `vs`, uninitialised.
    pub fn new(vs: &Path<'_>, input: i64, output: i64, bias: bool) -> Self {
        Linear {
            weight: param(vs, "weight", &[output, input]),
            bias: bias.then(|| param(vs, "bias", &[output])),
        }
    }

    /// Applies the layer (a narrow weight upcast to `x`'s dtype).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&upcast(&self.weight, x.kind()), self.bias.as_ref())
    }

    /// The dtype the layer computes in: its weight's, or for a weight kept
    /// narrow (8 bits, GGML blocks), `otherwise`.
    pub fn compute_kind(&self, otherwise: Kind) -> Kind {
        match is_kept_narrow(&self.weight) {
            true => otherwise,
            false => self.weight.kind(),
        }
    }
}

/// A 2-d convolution.
#[derive(Debug)]
pub struct Conv2d {
    /// The weight, under `weight`.
    pub weight: Tensor,
    /// The bias, under `bias`.
    pub bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    /// A square `kernel` convolution with bias.
    pub fn new(
        vs: &Path<'_>,
        input: i64,
        output: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Self {
        Conv2d {
            bias: Some(param(vs, "bias", &[output])),
            ..Self::no_bias(vs, input, output, kernel, stride, padding)
        }
    }

    /// The same without a bias.
    pub fn no_bias(
        vs: &Path<'_>,
        input: i64,
        output: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Self {
        Conv2d {
            weight: param(vs, "weight", &[output, input, kernel, kernel]),
            bias: None,
            stride,
            padding,
        }
    }

    /// Applies the layer (a narrow weight upcast to `x`'s dtype).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &upcast(&self.weight, x.kind()),
            self.bias.as_ref(),
            [self.stride; 2],
            [self.padding; 2],
            [1, 1],
            1,
        )
    }
}

/// Group normalisation over channels.
#[derive(Debug)]
pub struct GroupNorm {
    /// The weight, under `weight`.
    pub weight: Tensor,
    /// The bias, under `bias`.
    pub bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    /// The layer under `vs`, uninitialised.
    pub fn new(vs: &Path<'_>, groups: i64, channels: i64, eps: f64) -> Self {
        GroupNorm {
            weight: param(vs, "weight", &[channels]),
            bias: param(vs, "bias", &[channels]),
            groups,
            eps,
        }
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// Layer normalisation over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    /// The weight, under `weight`.
    pub weight: Tensor,
    /// The bias, under `bias`.
    pub bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// The layer under `vs`, uninitialised.
    pub fn new(vs: &Path<'_>, dim: i64, eps: f64) -> Self {
        LayerNorm {
            weight: param(vs, "weight", &[dim]),
            bias: param(vs, "bias", &[dim]),
            eps,
        }
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.weight.size();
        x.layer_norm(&dim, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// RMS normalisation with a learned scale, as transformers' `T5LayerNorm`
/// and diffusers' `RMSNorm` compute it: `x / sqrt(mean(x^2) + eps)` with the
/// mean taken in f32, cast to the weight's dtype when that is f16/bf16,
/// then scaled.
#[derive(Debug)]
pub struct RmsNorm {
    /// The scale, under `weight`.
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// The norm under `vs`, uninitialised.
    pub fn new(vs: &Path<'_>, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: param(vs, "weight", &[dim]),
            eps,
        }
    }

    /// Applies the norm over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x
            .to_kind(Kind::Float)
            .pow_tensor_scalar(2)
            .mean_dim(-1, true, None::<Kind>);
        let normed = x * (variance + self.eps).rsqrt();
        let normed = match self.weight.kind() {
            kind @ (Kind::Half | Kind::BFloat16) => normed.to_kind(kind),
            _ => normed,
        };
        normed * &self.weight
    }
}

/// A lookup table of vectors.
#[derive(Debug)]
pub struct Embedding {
    /// The weight, under `weight`.
    pub weight: Tensor,
    /// The dtype it was made in: what an 8-bit weight is upcast to.
    kind: Kind,
}

impl Embedding {
    /// The layer under `vs`, uninitialised.
    pub fn new(vs: &Path<'_>, count: i64, dim: i64) -> Self {
        Embedding {
            weight: param(vs, "weight", &[count, dim]),
            kind: vs.kind(),
        }
    }

    /// Applies the layer.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&upcast(&self.weight, self.kind), ids, -1, false, false)
    }
}

/// Fills every parameter of `vs` as PyTorch's default initialisers would
/// (uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases of
/// linear and conv layers, ones and zeros for norms, normal(0, 0.02) for
/// embeddings), seeded by the global generator. For training from scratch.
pub fn init_for_training(vs: &tch::nn::VarStore) {
    let _guard = tch::no_grad_guard();
    let variables = vs.variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    // Fan-in of each weight, to size its bias too.
    let fan_in = |name: &str| -> Option<i64> {
        let weight = variables.get(&format!("{}.weight", name.rsplit_once('.')?.0))?;
        let size = weight.size();
        (size.len() >= 2).then(|| size[1..].iter().product())
    };
    for name in names {
        let mut tensor = variables[name].shallow_clone();
        let is_norm = name.contains("norm") && tensor.dim() == 1;
        if is_norm {
            let _ = if name.ends_with("weight") {
                tensor.fill_(1.0)
            } else {
                tensor.fill_(0.0)
            };
        } else if name.contains("embedding") && tensor.dim() == 2 {
            let _ = tensor.normal_(0.0, 0.02);
        } else if let Some(fan) = fan_in(name) {
            let bound = 1.0 / (fan as f64).sqrt();
            let _ = tensor.uniform_(-bound, bound);
        } else {
            let _ = tensor.fill_(0.0);
        }
        debug_assert!(tensor.kind() != Kind::Int64);
    }
}

/// `t` (4-d) with channels-last strides: NHWC in memory, NCHW in shape, the
/// same values. cuDNN's tensor-core convolutions work in this layout; a
/// convolution whose weight or input is channels-last returns channels-last.
pub fn channels_last(t: &Tensor) -> Tensor {
    if t.dim() != 4 {
        return t.shallow_clone();
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether `t` is a 4-d tensor laid out channels-last (as PyTorch judges
/// it: dimensions of size 1 do not count, so a 1x1 kernel is both layouts).
pub fn is_channels_last(t: &Tensor) -> bool {
    t.dim() == 4 && t.permute([0, 2, 3, 1]).is_contiguous()
}

/// Re-lays every 4-d variable of `vs` (the convolution weights)
/// channels-last, in place: the layers keep their handles and from then on
/// convolve in that layout. Numbers may differ from the default layout in
/// the last bits (another summation order), as in PyTorch.
pub fn convs_to_channels_last(vs: &tch::nn::VarStore) {
    let _guard = tch::no_grad_guard();
    for (_, mut var) in vs.variables() {
        if var.dim() == 4 && !is_channels_last(&var) {
            var.set_data(&channels_last(&var));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn channels_last_weights_keep_the_convolution_and_switch_its_layout() {
        let _rng = crate::GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let conv = Conv2d::new(&vs.root(), 8, 16, 3, 1, 1);
        init_for_training(&vs);
        let x = Tensor::randn([2, 8, 12, 10], (Kind::Float, Device::Cpu));
        let before = conv.forward(&x);
        assert!(!is_channels_last(&conv.weight));
        convs_to_channels_last(&vs);
        // The layer's own handle sees the new layout (set_data is in place).
        assert!(is_channels_last(&conv.weight));
        let after = conv.forward(&x);
        assert!(is_channels_last(&after), "strides {:?}", after.stride());
        let diff = (&after - &before).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max-abs {diff}");
        assert!(is_channels_last(&channels_last(&x)));
        assert_eq!(channels_last(&x), x);
    }
}
