//! FLUX.1 LoRAs in the names other tools write, rewritten as diffusers'
//! adapters the way diffusers' converters rewrite them, so a merge gives
//! diffusers' fused weights bit for bit:
//!
//! - kohya sd-scripts (`lora_unet_double_blocks_0_img_attn_qkv`, `lora_te1_`
//!   for CLIP-L) and ComfyUI's spelling of the same (`diffusion_model.double_blocks.0.…`,
//!   `text_encoders.clip_l.transformer.…`): `alpha / rank` folded into the
//!   factors (`down * scale_down`, `up * scale_up`, the power of two moved to
//!   `up` while `scale_down * 2 < scale_up`), a fused q/k/v or single-block
//!   input split into one adapter per diffusers module (the same `down`, `up`
//!   split by rows);
//! - XLabs' attention-processor LoRAs (`double_blocks.0.processor.qkv_lora1.down.weight`);
//! - Black Forest Labs' module names with PEFT's `lora_A`/`lora_B`.
//!
//! Where diffusers leaves parts out (T5's modules, ComfyUI's position
//! embeddings, bias and norm differences) they are reported skipped.
//! diffusers 0.42 also drops a kohya file's modules outside the blocks
//! (`img_in`, `txt_in`, `time_in`, `vector_in`, `guidance_in`, `final_layer`:
//! its converter writes them without the `transformer.` prefix its loader
//! keeps); here they are merged, folded the same way.

use std::collections::BTreeMap;
use std::path::Path;

use sd_flux::bfl::{self, Rows};
use tch::Tensor;

use crate::error::{LoraError, Result};

/// The FLUX LoRA layouts read here (diffusers' own needs no rewriting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Kohya,
    ComfyUi,
    XLabs,
    Bfl,
}

/// A file's tensors by name.
pub(crate) type Tensors = BTreeMap<String, Tensor>;

/// Keys rewritten, and keys left out with why.
pub(crate) type Converted = (Tensors, Vec<(String, String)>);

fn bfl_block(key: &str) -> bool {
    let key = key.strip_prefix("diffusion_model.").unwrap_or(key);
    key.starts_with("double_blocks.") || key.starts_with("single_blocks.")
}

/// The layout of a FLUX LoRA in other tools' names; `None` for any other file.
pub(crate) fn layout<'a>(mut names: impl Iterator<Item = &'a String> + Clone) -> Option<Layout> {
    let kohya = |k: &&String| {
        k.starts_with("lora_unet_double_blocks_") || k.starts_with("lora_unet_single_blocks_")
    };
    if names.clone().any(|k| kohya(&k)) {
        Some(Layout::Kohya)
    } else if names
        .clone()
        .any(|k| bfl_block(k) && k.contains(".processor."))
    {
        Some(Layout::XLabs)
    } else if names
        .clone()
        .any(|k| k.starts_with("diffusion_model.") && bfl_block(k) && k.contains(".lora_down."))
    {
        Some(Layout::ComfyUi)
    } else if names.any(|k| bfl_block(k) && k.contains(".lora_A.")) {
        Some(Layout::Bfl)
    } else {
        None
    }
}

/// Rewrites `tensors` of `layout` as diffusers' adapters.
pub(crate) fn to_diffusers(path: &Path, layout: Layout, tensors: Tensors) -> Result<Converted> {
    let converted = match layout {
        Layout::Kohya => kohya(tensors, Vec::new()),
        Layout::ComfyUi => {
            let (renamed, skipped) = comfyui_to_kohya(tensors);
            kohya(renamed, skipped)
        }
        Layout::XLabs => xlabs(tensors),
        Layout::Bfl => bfl_named(path, tensors),
    };
    // (errors name the file)
    converted.map_err(|e| match e {
        LoraError::InvalidInput { context, message }
            if !context.contains(&*path.to_string_lossy()) =>
        {
            LoraError::invalid(path.display().to_string(), format!("{context}: {message}"))
        }
        other => other,
    })
}

/// `down` and `up` with `alpha / rank` folded in as diffusers' kohya FLUX
/// converter folds it. For a fused module (`fused`) diffusers divides the
/// alpha tensor in its own dtype; for the others (and CLIP's) it divides
/// the alpha as a Python float.
fn fold(
    down: &Tensor,
    up: &Tensor,
    alpha: Option<&Tensor>,
    fused: bool,
) -> Result<(Tensor, Tensor)> {
    let rank = rows_of(down)?;
    let scale = match alpha {
        None => 1.0,
        Some(a) if fused => a
            .f_div_scalar(rank)?
            .f_reshape([1i64])?
            .f_double_value(&[0])?,
        Some(a) => a.f_reshape([1i64])?.f_double_value(&[0])? / rank as f64,
    };
    let (mut scale_down, mut scale_up) = (scale, 1.0);
    while scale_down * 2.0 < scale_up {
        scale_down *= 2.0;
        scale_up /= 2.0;
    }
    Ok((down.f_mul_scalar(scale_down)?, up.f_mul_scalar(scale_up)?))
}

/// A factor's rows (its rank, or its outputs); a scalar has none.
fn rows_of(factor: &Tensor) -> Result<i64> {
    factor
        .size()
        .first()
        .copied()
        .ok_or_else(|| LoraError::invalid("a FLUX LoRA factor", "a scalar where a matrix belongs"))
}

/// One adapter per diffusers module of a BFL module: `down` copied to each,
/// `up` split by rows (or its halves swapped), under `transformer.` names.
fn emit(out: &mut Tensors, parts: &[String], rows: Rows, down: &Tensor, up: &Tensor) -> Result<()> {
    let total = rows_of(up)?;
    let ups = match rows {
        Rows::SwappedHalves => {
            let half = total / 2;
            vec![Tensor::f_cat(
                &[up.f_narrow(0, half, half)?, up.f_narrow(0, 0, half)?],
                0,
            )?]
        }
        _ => {
            let mut start = 0;
            let mut ups = Vec::new();
            for n in rows.split(parts.len(), total) {
                ups.push(up.f_narrow(0, start, n)?.f_contiguous()?);
                start += n;
            }
            ups
        }
    };
    for (name, up) in parts.iter().zip(ups) {
        out.insert(
            format!("transformer.{name}.lora_A.weight"),
            down.shallow_clone(),
        );
        out.insert(format!("transformer.{name}.lora_B.weight"), up);
    }
    Ok(())
}

/// The number of blocks a file names (`lora_unet_double_blocks_7_…` -> 8).
fn block_count(tensors: &Tensors, prefix: &str) -> usize {
    let index = |k: &String| {
        k.strip_prefix(prefix)?
            .split('_')
            .next()?
            .parse::<usize>()
            .ok()
    };
    tensors.keys().filter_map(index).max().map_or(0, |m| m + 1)
}

/// kohya's FLUX files (also ComfyUI's, renamed).
fn kohya(mut tensors: Tensors, mut skipped: Vec<(String, String)>) -> Result<Converted> {
    let modules = bfl::linear_modules(
        block_count(&tensors, "lora_unet_double_blocks_"),
        block_count(&tensors, "lora_unet_single_blocks_"),
    );
    let by_underscored: BTreeMap<String, String> = modules
        .into_iter()
        .map(|m| (m.replace('.', "_"), m))
        .collect();
    let names: Vec<String> = (tensors.keys())
        .filter_map(|k| k.strip_suffix(".lora_down.weight").map(str::to_string))
        .collect();
    let mut out = Tensors::new();
    for name in names {
        let down = tensors.remove(&format!("{name}.lora_down.weight"));
        let up = tensors.remove(&format!("{name}.lora_up.weight"));
        let alpha = tensors.remove(&format!("{name}.alpha"));
        let (Some(down), Some(up)) = (down, up) else {
            skipped.push((name, "a lora_down without its lora_up".into()));
            continue;
        };
        if let Some(te) = name
            .strip_prefix("lora_te_")
            .or(name.strip_prefix("lora_te1_"))
        {
            let (down, up) = fold(&down, &up, alpha.as_ref(), false)?;
            out.insert(format!("lora_te1_{te}.lora_down.weight"), down);
            out.insert(format!("lora_te1_{te}.lora_up.weight"), up);
            continue;
        }
        if name.starts_with("lora_te") {
            skipped.push((
                name,
                "T5's LoRA modules are not applied (diffusers leaves them out too)".into(),
            ));
            continue;
        }
        let module = name
            .strip_prefix("lora_unet_")
            .and_then(|m| by_underscored.get(m));
        let Some((parts, rows)) = module.and_then(|m| bfl::linear_module(m)) else {
            skipped.push((name, "not a linear module of FLUX.1's transformer".into()));
            continue;
        };
        let fused = matches!(rows, Rows::Equal | Rows::SingleInput);
        let (down, up) = fold(&down, &up, alpha.as_ref(), fused)?;
        emit(&mut out, &parts, rows, &down, &up)?;
    }
    skipped.extend(
        tensors
            .into_keys()
            .map(|k| (k, "not a key of a kohya FLUX LoRA".to_string())),
    );
    Ok((out, skipped))
}

/// ComfyUI's names for kohya's file: the module's dotted path under
/// `diffusion_model.` or `text_encoders.clip_l.transformer.`; what diffusers
/// leaves out is reported.
fn comfyui_to_kohya(tensors: Tensors) -> Converted {
    let mut out = Tensors::new();
    let mut skipped = Vec::new();
    for (key, tensor) in tensors {
        let why = if key.starts_with("text_encoders.t5xxl.") {
            Some("T5's LoRA modules are not applied (diffusers leaves them out too)")
        } else if key.contains("position_embedding") {
            Some("position-embedding updates are not applied (diffusers leaves them out too)")
        } else if key.contains(".diff_b") || key.contains(".diff") {
            Some("bias and norm differences are not applied (diffusers leaves them out too)")
        } else {
            None
        };
        if let Some(why) = why {
            skipped.push((key, why.to_string()));
            continue;
        }
        let renamed = [
            ("diffusion_model.", "lora_unet_"),
            ("text_encoders.clip_l.transformer.", "lora_te_"),
        ]
        .iter()
        .find_map(|(from, to)| {
            let rest = key.strip_prefix(from)?;
            let part = ["lora_down.weight", "lora_up.weight", "alpha"]
                .iter()
                .find(|p| rest.ends_with(&format!(".{p}")))?;
            let module = &rest[..rest.len() - part.len() - 1];
            Some(format!("{to}{}.{part}", module.replace('.', "_")))
        });
        match renamed {
            Some(name) => drop(out.insert(name, tensor)),
            None => skipped.push((key, "not a key of a ComfyUI FLUX LoRA".into())),
        }
    }
    (out, skipped)
}

/// A file of unscaled `down`/`up` pairs (`{module}{down}`, `{module}{up}`),
/// each module's diffusers modules found by `target` (without ComfyUI's
/// `diffusion_model.`); what it finds no place for is reported with `what`.
fn pairs(
    mut tensors: Tensors,
    (down_suffix, up_suffix): (&str, &str),
    target: impl Fn(&str) -> Option<(Vec<String>, Rows)>,
    what: &str,
) -> Result<Converted> {
    let mut out = Tensors::new();
    let mut skipped = Vec::new();
    let downs: Vec<String> = (tensors.keys())
        .filter(|k| k.ends_with(down_suffix))
        .cloned()
        .collect();
    for key in downs {
        let module = key.trim_end_matches(down_suffix);
        let place = target(module.strip_prefix("diffusion_model.").unwrap_or(module));
        let up = tensors.remove(&format!("{module}{up_suffix}"));
        let down = tensors.remove(&key);
        let (Some((parts, rows)), Some(down), Some(up)) = (place, down, up) else {
            skipped.push((key, format!("not a module of {what}")));
            continue;
        };
        emit(&mut out, &parts, rows, &down, &up)?;
    }
    let unknown = tensors
        .into_keys()
        .map(|k| (k, format!("not a key of {what}")));
    skipped.extend(unknown);
    Ok((out, skipped))
}

/// XLabs' processor LoRAs (no alpha: scale 1): the double blocks' image (1)
/// and text (2) q/k/v and output projections, the single blocks' q/k/v and
/// output.
fn xlabs(tensors: Tensors) -> Result<Converted> {
    let suffixes = (".down.weight", ".up.weight");
    pairs(tensors, suffixes, xlabs_module, "an XLabs FLUX LoRA")
}

/// An XLabs module (`double_blocks.0.processor.qkv_lora1`): its diffusers modules.
fn xlabs_module(module: &str) -> Option<(Vec<String>, Rows)> {
    let (block, processor) = module.split_once(".processor.")?;
    let bfl_part = match (block.starts_with("double_blocks."), processor) {
        (true, "qkv_lora1") => "img_attn.qkv",
        (true, "proj_lora1") => "img_attn.proj",
        (true, "qkv_lora2") => "txt_attn.qkv",
        (true, "proj_lora2") => "txt_attn.proj",
        (false, "proj_lora") => "linear2",
        (false, "qkv_lora") => {
            // q, k and v only: the first three parts of the fused input
            let (mut parts, _) = bfl::linear_module(&format!("{block}.linear1"))?;
            parts.truncate(3);
            return Some((parts, Rows::Equal));
        }
        _ => return None,
    };
    bfl::linear_module(&format!("{block}.{bfl_part}"))
}

/// BFL's names with `lora_A`/`lora_B` (no alpha). A Control LoRA (BFL's
/// Canny/Depth LoRAs: they also carry norm scales and biases, and widen the
/// input for a control image) is refused.
fn bfl_named(path: &Path, tensors: Tensors) -> Result<Converted> {
    if let Some(key) = (tensors.keys()).find(|k| k.ends_with(".scale") || k.ends_with(".bias")) {
        return Err(LoraError::invalid(
            path.display().to_string(),
            format!(
                "'{key}': a FLUX Control LoRA (Black Forest Labs' Canny/Depth LoRAs change norms \
                 and widen the input for a control image); FLUX Control pipelines are not supported"
            ),
        ));
    }
    let suffixes = (".lora_A.weight", ".lora_B.weight");
    pairs(
        tensors,
        suffixes,
        bfl::linear_module,
        "a FLUX LoRA in BFL's names",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    fn names(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn layouts_are_told_apart_by_their_names() {
        let cases = [
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                Some(Layout::Kohya),
            ),
            (
                "diffusion_model.single_blocks.3.linear1.lora_down.weight",
                Some(Layout::ComfyUi),
            ),
            (
                "double_blocks.0.processor.qkv_lora1.down.weight",
                Some(Layout::XLabs),
            ),
            (
                "double_blocks.0.img_attn.qkv.lora_A.weight",
                Some(Layout::Bfl),
            ),
            (
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                None,
            ),
            (
                "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight",
                None,
            ),
        ];
        for (key, want) in cases {
            assert_eq!(layout(names(&[key]).iter()), want, "{key}");
        }
    }

    /// alpha 3 on rank 4 (0.75) stays on `down`; alpha 1 on rank 16
    /// (1/16) is split as 1/4 and 1/4; the fused rule divides in the alpha's
    /// dtype (bf16: 2/3 rounds to 0.66796875).
    #[test]
    fn alphas_fold_into_the_factors_as_diffusers_folds_them() {
        let ones = |rank: i64| {
            (
                Tensor::ones([rank, 2], (Kind::Float, tch::Device::Cpu)),
                Tensor::ones([2, rank], (Kind::Float, tch::Device::Cpu)),
            )
        };
        let value = |t: &Tensor| t.flatten(0, -1).double_value(&[0]);
        let (d, u) = ones(4);
        let (d, u) = fold(&d, &u, Some(&Tensor::from(3.0f32)), false).unwrap();
        assert_eq!((value(&d), value(&u)), (0.75, 1.0));
        let (d, u) = ones(16);
        let (d, u) = fold(&d, &u, Some(&Tensor::from(1.0f32)), false).unwrap();
        assert_eq!((value(&d), value(&u)), (0.25, 0.25));
        let (d, u) = ones(3);
        let alpha = Tensor::from(2.0f32).to_kind(Kind::BFloat16);
        let (d, _) = fold(&d, &u, Some(&alpha), true).unwrap();
        assert_eq!(value(&d), 0.66796875);
        let (d, _) = fold(&ones(3).0, &ones(3).1, Some(&Tensor::from(2.0f32)), false).unwrap();
        assert_eq!(value(&d), (2.0f64 / 3.0) as f32 as f64);
    }

    #[test]
    fn a_scalar_factor_is_an_error_naming_the_file() {
        let t = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu));
        let tensors: Tensors = [
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                t(&[]),
            ),
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
                t(&[96, 2]),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let error = to_diffusers(Path::new("x.safetensors"), Layout::Kohya, tensors).unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.safetensors: a FLUX LoRA factor: a scalar where a matrix belongs"
        );
    }

    #[test]
    fn comfyui_names_become_kohya_names() {
        let t = || Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
        let tensors: Tensors = [
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight",
            "diffusion_model.double_blocks.0.img_attn.qkv.alpha",
            "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.lora_up.weight",
            "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_up.weight",
            "diffusion_model.double_blocks.0.img_attn.qkv.diff_b",
        ]
        .into_iter()
        .map(|k| (k.to_string(), t()))
        .collect();
        let (renamed, skipped) = comfyui_to_kohya(tensors);
        let keys: Vec<&str> = renamed.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                "lora_unet_double_blocks_0_img_attn_qkv.alpha",
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
            ]
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
    }
}
