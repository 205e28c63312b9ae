//! `sd convert`: a model's weights into a GGUF file of a chosen type (as
//! ComfyUI-GGUF's and stable-diffusion.cpp's users keep them), and a GGUF
//! file back into safetensors.
//!
//! Names stay the original checkpoint's: a single file keeps its keys (the
//! whole checkpoint, stable-diffusion.cpp's form, or with `denoiser_only`
//! the denoiser without `model.diffusion_model.`, ComfyUI-GGUF's form); a
//! diffusers folder gives its UNet under LDM names, in ComfyUI-GGUF's form.
//! The denoiser's layer weights whose rows are whole blocks (and that are
//! not tiny) take the chosen type, as city96's converter picks them; its
//! other weights of 2+ dims are F16 (BF16 from a bf16 file), 1-d tensors
//! F32; text encoders and VAEs keep their dtype. A float type asked for
//! (F32, F16, BF16) is every tensor's of 2+ dims. Each tensor is read,
//! quantized and written in turn: the model is never held whole.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use sd_core::weights::{component_files, MappedFile, Stored};
use sd_gguf::GgmlType::{BF16, F16, F32, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use sd_gguf::{TensorPlan, Value};

pub use sd_gguf::GgmlType;
use sd_unet::{ldm::LdmUNetKeys, UNetConfig};
use tch::Kind;

use crate::denoiser_file::PREFIX;
use crate::error::{PipelineError, Result};
use crate::model::{ModelFamily, ModelIndex};

/// What [`convert`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// A GGUF file, the denoiser's layer weights in this type.
    Gguf(GgmlType),
    /// A safetensors file, every float tensor's values in this dtype (f32,
    /// f16 or bf16).
    SafeTensors(Kind),
}

/// The type names [`Target::for_output`] takes (`sd convert --type`,
/// `sd_rs.convert(type=)`).
pub const TYPE_NAMES: &str = "q8_0, q5_1, q5_0, q4_1, q4_0, f16, bf16, f32";

impl Target {
    /// What `output` holds, by its extension (`.gguf` or `.safetensors`),
    /// in the type `name` (by default Q8_0 in a GGUF file, f32 values in
    /// safetensors); one line naming the file or type when it cannot be.
    pub fn for_output(output: &Path, name: Option<&str>) -> Result<Target> {
        let gguf = match output.extension().and_then(|e| e.to_str()) {
            Some("gguf") => true,
            Some("safetensors") => false,
            _ => {
                return Err(PipelineError::model(
                    output,
                    "name the output .gguf or .safetensors",
                ))
            }
        };
        let name = name.unwrap_or(if gguf { "q8_0" } else { "f32" });
        let kind = match name.to_ascii_lowercase().as_str() {
            "q8_0" => Q8_0,
            "q5_1" => Q5_1,
            "q5_0" => Q5_0,
            "q4_1" => Q4_1,
            "q4_0" => Q4_0,
            "f16" => F16,
            "bf16" => BF16,
            "f32" => F32,
            _ => {
                let message = format!("type {name}: not one of {TYPE_NAMES}");
                return Err(PipelineError::model(output, message));
            }
        };
        match (gguf, kind) {
            (true, kind) => Ok(Target::Gguf(kind)),
            (false, F32) => Ok(Target::SafeTensors(Kind::Float)),
            (false, F16) => Ok(Target::SafeTensors(Kind::Half)),
            (false, BF16) => Ok(Target::SafeTensors(Kind::BFloat16)),
            (false, _) => Err(PipelineError::model(
                output,
                format!("type {name}: a .safetensors file holds f32, f16 or bf16 values"),
            )),
        }
    }
}

/// What [`convert`] did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Converted {
    /// Tensors written.
    pub tensors: usize,
    /// Of them, quantized to the chosen GGML type.
    pub quantized: usize,
    /// Tensors left out: integer buffers (such as CLIP's `position_ids`,
    /// which the models recompute), not carried by either format here.
    pub dropped: Vec<String>,
}

/// One tensor to carry over: its name in the output, where it comes from,
/// and whether it belongs to the denoiser.
struct Item {
    name: String,
    file: usize,
    key: String,
    denoiser: bool,
}

/// Converts `input` (a diffusers folder, a safetensors or GGUF file) into
/// `output` as `target` says.
pub fn convert(
    input: &Path,
    output: &Path,
    target: Target,
    denoiser_only: bool,
) -> Result<Converted> {
    if input.canonicalize().ok() == output.canonicalize().ok() {
        return Err(PipelineError::model(
            output,
            "is the input: write elsewhere",
        ));
    }
    if let Target::Gguf(kind) = target {
        if !sd_gguf::WRITABLE.contains(&kind) {
            let message = format!(
                "{}: not a type written here (types: {})",
                kind.name(),
                sd_gguf::WRITABLE_NAMES
            );
            return Err(PipelineError::model(output, message));
        }
    }
    let (files, items) = match input.is_dir() {
        true => folder_items(input)?,
        false => file_items(input, denoiser_only)?,
    };
    // written beside, then renamed: a failure leaves no half file
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = match target {
        Target::Gguf(kind) => write_gguf(&files, &items, kind, &partial),
        Target::SafeTensors(kind) => write_safetensors(&files, &items, kind, &partial),
    };
    let renamed = written.and_then(|done| {
        std::fs::rename(&partial, output)
            .map_err(|e| PipelineError::model(output, format!("cannot write ({e})")))?;
        Ok(done)
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    renamed
}

/// A folder's UNet under LDM names, without the prefix.
fn folder_items(dir: &Path) -> Result<(Vec<MappedFile>, Vec<Item>)> {
    let index = ModelIndex::read(dir)?;
    if index.family == ModelFamily::StableDiffusion3 {
        return Err(PipelineError::model(
            dir,
            "an SD3 folder: its transformer has no converter to Stability's names here; \
             convert Stability's single file (sd3.5_*.safetensors) instead",
        ));
    }
    let unet = dir.join("unet");
    let keys = LdmUNetKeys::new(&UNetConfig::from_file(unet.join("config.json"))?)?;
    let files = component_files(&unet, "diffusion_pytorch_model", None)?
        .iter()
        .map(MappedFile::open)
        .collect::<sd_core::Result<Vec<_>>>()?;
    let mut items = Vec::new();
    for (index, file) in files.iter().enumerate() {
        for entry in file.entries() {
            let name = keys.to_ldm(&entry.name).ok_or_else(|| {
                PipelineError::model(
                    file.path(),
                    format!("{}: no LDM name for this UNet key", entry.name),
                )
            })?;
            items.push(Item {
                name,
                file: index,
                key: entry.name.clone(),
                denoiser: true,
            });
        }
    }
    Ok((files, items))
}

/// A file's tensors under their own names (the denoiser's alone, without
/// the prefix, for `denoiser_only`).
fn file_items(path: &Path, denoiser_only: bool) -> Result<(Vec<MappedFile>, Vec<Item>)> {
    let file = MappedFile::open(path)?;
    let unprefixed = crate::denoiser_file::is_unprefixed(&file.shapes()?);
    let items = (file.entries().iter())
        .filter_map(|entry| {
            let key = entry.name.clone();
            let stripped = key.strip_prefix(PREFIX);
            let denoiser = unprefixed || stripped.is_some();
            let name = match (denoiser_only, stripped) {
                (true, Some(rest)) => rest.to_string(),
                (true, None) if !unprefixed => return None,
                _ => key.clone(),
            };
            Some(Item {
                name,
                file: 0,
                key,
                denoiser,
            })
        })
        .collect::<Vec<_>>();
    if items.is_empty() {
        return Err(PipelineError::model(
            path,
            "no model.diffusion_model.* tensors to keep (denoiser only)",
        ));
    }
    Ok((vec![file], items))
}

/// Whether a stored tensor holds float values (what both formats carry).
fn is_float(stored: &Stored) -> bool {
    match stored {
        Stored::Torch(kind) => {
            matches!(
                kind,
                Kind::Double | Kind::Float | Kind::Half | Kind::BFloat16
            ) || sd_core::nn::is_fp8(*kind)
        }
        Stored::Ggml(_) => true,
        _ => false,
    }
}

/// The GGML type a tensor is written in (see the module's rules).
fn gguf_type(item: &Item, shape: &[i64], stored: &Stored, want: GgmlType) -> GgmlType {
    let (per_block, _) = want.block();
    let numel: i64 = shape.iter().product();
    let whole_blocks = shape.last().is_some_and(|&d| d as u64 % per_block == 0);
    let layer_weight = item.name.ends_with(".weight") && shape.len() >= 2;
    let stored_kind = match stored {
        Stored::Torch(kind) => Some(*kind),
        _ => None,
    };
    if item.denoiser && layer_weight && whole_blocks && numel > 1024 {
        return want;
    }
    match (shape.len(), stored_kind) {
        (0 | 1, _) => GgmlType::F32,
        // a float type asked for: every tensor of 2+ dims in it
        _ if !want.is_quantized() => want,
        (_, Some(Kind::BFloat16)) => GgmlType::BF16,
        (_, Some(Kind::Float)) if !item.denoiser => GgmlType::F32,
        _ => GgmlType::F16,
    }
}

/// The checkpoint family GGUF readers key on (`general.architecture`).
fn architecture(items: &[Item]) -> &'static str {
    let has = |part: &str| items.iter().any(|i| i.name.contains(part));
    match () {
        _ if has("joint_blocks.") => "sd3",
        _ if has("double_blocks.") => "flux",
        _ if has("label_emb.") => "sdxl",
        _ if has("input_blocks.") => "sd1",
        _ => "sd-rs",
    }
}

fn write_gguf(
    files: &[MappedFile],
    items: &[Item],
    want: GgmlType,
    output: &Path,
) -> Result<Converted> {
    let mut converted = Converted::default();
    let mut kept = Vec::new();
    let mut plans = Vec::new();
    for item in items {
        let entry = (files[item.file].entry(&item.key)).expect("items come from the entries");
        if !is_float(&entry.stored) {
            converted.dropped.push(item.name.clone());
            continue;
        }
        let kind = gguf_type(item, &entry.shape, &entry.stored, want);
        converted.quantized += usize::from(kind == want && kind.is_quantized());
        plans.push(TensorPlan {
            name: item.name.clone(),
            shape: entry.shape.iter().map(|&d| d as u64).collect(),
            kind,
        });
        kept.push(item);
    }
    converted.tensors = plans.len();
    let metadata = [
        (
            "general.architecture".to_string(),
            Value::String(architecture(items).into()),
        ),
        ("general.quantization_version".to_string(), Value::U64(2)),
    ];
    let mut failure = None;
    let mut data = |i: usize| -> sd_gguf::Result<Vec<u8>> {
        let item = kept[i];
        let values = match read_f32(&files[item.file], &item.key) {
            Ok(values) => values,
            Err(e) => {
                failure = Some(e);
                return Err(sd_gguf::GgufError::Format {
                    path: PathBuf::from(&item.key),
                    message: "could not be read".into(),
                });
            }
        };
        sd_gguf::quantize(plans[i].kind, &values, &item.name)
    };
    let written = sd_gguf::write(output, &metadata, &plans, &mut data);
    if let Some(e) = failure {
        return Err(e);
    }
    written.map_err(|e| PipelineError::model(output, e.to_string()))?;
    Ok(converted)
}

/// A tensor's values as f32 (GGML blocks decoded).
fn read_f32(file: &MappedFile, key: &str) -> Result<Vec<f32>> {
    let tensor = file.read(key)?.to_kind(Kind::Float).flatten(0, -1);
    Ok(Vec::<f32>::try_from(&tensor)?)
}

/// A tensor made when the writer asks for its bytes.
struct Lazy<'a> {
    file: &'a MappedFile,
    key: &'a str,
    kind: Kind,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
}

impl safetensors::View for Lazy<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = self.data_len();
        let mut out = vec![0u8; bytes];
        // (the header was read and checked: a failure here would be the
        // file changing underneath, and leaves zeros)
        if let Ok(tensor) = self.file.read(self.key) {
            let tensor = tensor.to_kind(self.kind).contiguous();
            let _ = tensor.f_copy_data_u8(&mut out, tensor.numel());
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.kind.elt_size_in_bytes()
    }
}

fn write_safetensors(
    files: &[MappedFile],
    items: &[Item],
    want: Kind,
    output: &Path,
) -> Result<Converted> {
    let dtype_of = |kind: Kind| match kind {
        Kind::Float => Some(safetensors::Dtype::F32),
        Kind::Half => Some(safetensors::Dtype::F16),
        Kind::BFloat16 => Some(safetensors::Dtype::BF16),
        _ => None,
    };
    dtype_of(want).ok_or_else(|| PipelineError::model(output, "write f32, f16 or bf16"))?;
    let mut converted = Converted::default();
    let mut views = Vec::new();
    for item in items {
        let file = &files[item.file];
        let entry = file.entry(&item.key).expect("items come from the entries");
        let (true, Some(dtype)) = (is_float(&entry.stored), dtype_of(want)) else {
            converted.dropped.push(item.name.clone());
            continue;
        };
        let (kind, shape) = (want, entry.shape.iter().map(|&d| d as usize).collect());
        views.push((
            item.name.clone(),
            Lazy {
                file,
                key: &item.key,
                kind,
                dtype,
                shape,
            },
        ));
    }
    converted.tensors = views.len();
    safetensors::serialize_to_file(views, None, output)
        .map_err(|e| PipelineError::model(output, e.to_string()))?;
    Ok(converted)
}
