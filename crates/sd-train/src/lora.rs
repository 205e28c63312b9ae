//! Training a LoRA on the UNet instead of the whole UNet.
//!
//! The UNet's layers read their weights directly, so the low-rank factors
//! reach the forward pass through the weights themselves: before each step
//! every targeted weight is set to `W0 + s * up @ down` (s = alpha / rank),
//! the step's backward pass gives the weight's gradient `G`, and the chain
//! rule hands it to the factors (`dL/d up = s * G @ down^T`,
//! `dL/d down = s * up^T @ G`, obtained by back-propagating the surrogate
//! `sum(s * up @ down * G)`). Only the factors are optimised; the file
//! written is kohya's format (`lora_unet_<module>.lora_down.weight`,
//! `.lora_up.weight`, `.alpha`), which diffusers' `load_lora_weights`, A1111
//! and `sd-lora` all read.

use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};

/// The UNet modules a LoRA trains by default: the attention projections
/// (kohya's default network targets the transformer blocks' linear layers).
pub const DEFAULT_TARGETS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// The text-encoder modules `--lora-text-encoder` adds: its attention
/// projections.
pub const TEXT_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];

/// One trained module.
struct Module {
    /// kohya's key: the prefix and the module path with `_` for `.`.
    key: String,
    /// The UNet's weight variable.
    weight: Tensor,
    /// Its value before training.
    base: Tensor,
    /// (rank, in, ...) and (out, rank, 1...), leaves the optimiser updates.
    down: Tensor,
    up: Tensor,
}

/// One model a LoRA trains: kohya's key prefix (`lora_unet_`, `lora_te_`),
/// the model's variables and the module names to train.
pub struct LoraGroup<'a> {
    /// `lora_unet_` or `lora_te_`.
    pub prefix: &'static str,
    /// The model's variables.
    pub store: &'a VarStore,
    /// Module path endings to train.
    pub targets: &'a [&'a str],
}

/// The LoRA factors of the models in training.
pub struct LoraNetwork {
    params: VarStore,
    modules: Vec<Module>,
    rank: i64,
    alpha: f64,
}

impl LoraNetwork {
    /// Factors of `rank` for every weight of each group whose module path
    /// ends with one of its targets; `up` starts at zero (the models are
    /// unchanged at step 0), `down` random. Freezes every other variable of
    /// those models.
    pub fn new(groups: &[LoraGroup<'_>], rank: i64, alpha: f64, seed: i64) -> Result<Self> {
        if rank < 1 || !alpha.is_finite() || alpha <= 0.0 {
            return Err(TrainError::Config(format!(
                "LoRA rank {rank} and alpha {alpha}: the rank must be at least 1 and alpha positive"
            )));
        }
        tch::manual_seed(seed);
        let device = groups.first().map_or(Device::Cpu, |g| g.store.device());
        let params = VarStore::new(device);
        let mut names: Vec<(String, String, Tensor)> = Vec::new();
        for group in groups {
            let mut found: Vec<(String, String, Tensor)> = group
                .store
                .variables()
                .into_iter()
                .filter_map(|(name, t)| {
                    let module = name.strip_suffix(".weight")?;
                    let wanted = t.dim() >= 2
                        && group
                            .targets
                            .iter()
                            .any(|target| module.ends_with(&format!(".{target}")));
                    let key = format!("{}{}", group.prefix, module.replace('.', "_"));
                    wanted.then_some((key, name, t))
                })
                .collect();
            if found.is_empty() {
                return Err(TrainError::Config(format!(
                    "no module ends with any of {:?} ({})",
                    group.targets, group.prefix
                )));
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            freeze(group.store);
            names.extend(found);
        }
        let root = params.root();
        let mut modules = Vec::new();
        for (i, (key, name, weight)) in names.into_iter().enumerate() {
            let shape = weight.size();
            if rank > shape[0].min(shape[1..].iter().product()) {
                return Err(TrainError::Config(format!(
                    "LoRA rank {rank} is larger than {name} {shape:?} allows"
                )));
            }
            let fan_in: i64 = shape[1..].iter().product();
            let mut down_shape = vec![rank];
            down_shape.extend_from_slice(&shape[1..]);
            let mut up_shape = vec![shape[0], rank];
            up_shape.extend(std::iter::repeat_n(1, shape.len() - 2));
            let bound = 1.0 / (fan_in as f64).sqrt();
            let down = root.var(
                &format!("m{i}_down"),
                &down_shape,
                tch::nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            );
            let up = root.var(&format!("m{i}_up"), &up_shape, tch::nn::Init::Const(0.0));
            let base = weight.detach().copy();
            let weight = weight.set_requires_grad(true);
            modules.push(Module {
                key,
                weight,
                base,
                down,
                up,
            });
        }
        Ok(LoraNetwork {
            params,
            modules,
            rank,
            alpha,
        })
    }

    /// The factors, for the optimiser.
    pub fn params(&self) -> &VarStore {
        &self.params
    }

    /// Whether any trained module is outside the UNet (the text encoder's
    /// forward pass then needs gradients).
    pub fn trains_text_encoder(&self) -> bool {
        self.modules
            .iter()
            .any(|m| !m.key.starts_with("lora_unet_"))
    }

    fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    fn update(&self, m: &Module) -> Tensor {
        m.up.flatten(1, -1)
            .matmul(&m.down.flatten(1, -1))
            .reshape(m.weight.size())
            * self.scale()
    }

    /// Sets each weight to `W0 + s * up @ down` for the next forward pass.
    pub fn sync(&self) {
        let _guard = tch::no_grad_guard();
        for m in &self.modules {
            let merged = &m.base + self.update(m).to_kind(m.base.kind());
            m.weight.shallow_clone().copy_(&merged);
        }
    }

    /// After the loss's backward pass: moves each weight's gradient to its
    /// factors and clears it.
    pub fn backprop(&self) {
        let mut surrogate: Option<Tensor> = None;
        let mut grads = Vec::new();
        for m in &self.modules {
            let grad = m.weight.grad();
            if !grad.defined() {
                continue;
            }
            let term = (self.update(m) * grad.detach()).sum(Kind::Float);
            surrogate = Some(match surrogate {
                Some(s) => s + term,
                None => term,
            });
            grads.push(grad);
        }
        if let Some(s) = surrogate {
            s.backward();
        }
        // only now: the surrogate's backward pass reads them
        for grad in grads {
            let _ = grad.shallow_clone().zero_();
        }
    }

    /// Writes the factors in kohya's format (f32), with the rank, alpha and
    /// step count in the header's metadata (`ss_network_dim`,
    /// `ss_network_alpha`, as kohya's trainer writes them, and `sd_rs_steps`).
    pub fn save(&self, path: &Path, steps: usize) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for m in &self.modules {
            let key = &m.key;
            let cpu = |t: &Tensor| {
                t.detach()
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous()
            };
            tensors.push((format!("{key}.lora_down.weight"), cpu(&m.down)));
            tensors.push((format!("{key}.lora_up.weight"), cpu(&m.up)));
            tensors.push((format!("{key}.alpha"), Tensor::from(self.alpha as f32)));
        }
        let metadata = [
            ("ss_network_dim", self.rank.to_string()),
            ("ss_network_alpha", self.alpha.to_string()),
            ("ss_network_module", "networks.lora".to_string()),
            ("sd_rs_steps", steps.to_string()),
        ];
        write_with_metadata(path, &tensors, &metadata)
    }

    /// Continues from a file [`LoraNetwork::save`] wrote: the factors and the
    /// step count.
    pub fn load(&self, path: &Path) -> Result<usize> {
        let file = sd_core::weights::MappedFile::open(path)?;
        let _guard = tch::no_grad_guard();
        for m in &self.modules {
            let key = &m.key;
            for (part, target) in [("lora_down", &m.down), ("lora_up", &m.up)] {
                let value = file.read(&format!("{key}.{part}.weight"))?;
                if value.size() != target.size() {
                    return Err(TrainError::Config(format!(
                        "{}: {key}.{part} is {:?}, this run trains {:?} (another rank or model?)",
                        path.display(),
                        value.size(),
                        target.size()
                    )));
                }
                target.shallow_clone().copy_(&value);
            }
        }
        let steps = file
            .metadata()?
            .get("sd_rs_steps")
            .and_then(|s| s.parse().ok());
        steps.ok_or_else(|| {
            TrainError::Config(format!("{}: no sd_rs_steps in its header", path.display()))
        })
    }
}

/// No variable of the model needs a gradient but the trained weights.
fn freeze(store: &VarStore) {
    for var in store.variables().values() {
        let _ = var.set_requires_grad(false);
    }
}

/// A safetensors file with string metadata, its header in a fixed order
/// (tch's writer takes no metadata; the safetensors crate writes it in hash
/// order, so the same LoRA would not give the same bytes twice).
fn write_with_metadata(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut header = serde_json::Map::new();
    let meta: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone().into()))
        .collect();
    header.insert("__metadata__".into(), meta.into());
    let mut data: Vec<u8> = Vec::new();
    for (name, tensor) in tensors {
        let bytes = Vec::<f32>::try_from(tensor.flatten(0, -1))
            .map_err(|e| TrainError::Config(format!("{name}: {e}")))?;
        let start = data.len();
        data.extend(bytes.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": tensor.size(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| TrainError::Config(e.to_string()))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    let partial = path.with_extension("safetensors.partial");
    std::fs::write(&partial, &out).map_err(|e| sd_core::CoreError::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| sd_core::CoreError::io(path, e).into())
}
