//! From the released files' names to diffusers' (as diffusers'
//! `_convert_ip_adapter_image_proj_to_diffusers` and
//! `_convert_ip_adapter_attn_to_diffusers` rename them), with the shapes
//! read off the tensors.

use std::collections::BTreeMap;

use sd_core::load_report::LoadReport;
use tch::{nn::VarStore, Tensor};

use crate::projection::Shape;

/// A file's tensor shapes by name.
pub(crate) type Shapes = BTreeMap<String, Vec<i64>>;

fn dims(tensors: &Shapes, key: &str) -> Result<Vec<i64>, String> {
    tensors.get(key).cloned().ok_or_else(|| format!("no {key}"))
}

/// The projection's shapes; an adapter of another design is refused by name.
pub(crate) fn shape(tensors: &Shapes) -> Result<Shape, String> {
    let has = |key: &str| tensors.contains_key(key);
    let kinds = [
        ("image_proj.proj.3.weight", "IP-Adapter Full Face"),
        (
            "image_proj.perceiver_resampler.proj_in.weight",
            "IP-Adapter FaceID Plus",
        ),
        ("image_proj.norm.weight", "IP-Adapter FaceID"),
    ];
    if has("image_proj.proj.weight") {
        let proj = dims(tensors, "image_proj.proj.weight")?;
        let [rows, embed] = proj[..] else {
            return Err(format!("image_proj.proj.weight is {proj:?}, not a matrix"));
        };
        // diffusers' constant: the plain projection gives 4 tokens
        return Ok(Shape::Plain {
            embed,
            cross: rows / 4,
            tokens: 4,
        });
    }
    if has("image_proj.latents") {
        return plus_shape(tensors);
    }
    if let Some((_, name)) = kinds.iter().find(|(key, _)| has(key)) {
        return Err(format!(
            "{name} is not supported (plain and Plus adapters are)"
        ));
    }
    Err("no image_proj.proj.weight or image_proj.latents: not an IP-Adapter".into())
}

fn plus_shape(tensors: &Shapes) -> Result<Shape, String> {
    let latents = dims(tensors, "image_proj.latents")?;
    let [1, queries, hidden] = latents[..] else {
        return Err(format!(
            "image_proj.latents is {latents:?}, not (1, queries, width)"
        ));
    };
    let depth = (0..)
        .take_while(|i| tensors.contains_key(&format!("image_proj.layers.{i}.0.to_q.weight")))
        .count() as i64;
    let q = dims(tensors, "image_proj.layers.0.0.to_q.weight")?;
    Ok(Shape::Plus {
        embed: dims(tensors, "image_proj.proj_in.weight")?[1],
        hidden,
        output: dims(tensors, "image_proj.proj_out.weight")?[0],
        queries,
        // diffusers' constant: 64-wide heads
        heads: q[0] / 64,
        depth,
    })
}

/// The cross-attention layers' numbers in the file (1, 3, 5, ...), in
/// order, each with its width (`to_k_ip`'s rows).
pub(crate) fn layer_ids(tensors: &Shapes) -> Result<Vec<(i64, i64)>, String> {
    let mut ids = Vec::new();
    for (key, size) in tensors {
        let Some(id) = key.strip_prefix("ip_adapter.") else {
            continue;
        };
        let Some(id) = id.strip_suffix(".to_k_ip.weight") else {
            continue;
        };
        let id: i64 = id
            .parse()
            .map_err(|_| format!("{key}: not a layer number"))?;
        ids.push((id, size[0]));
    }
    if ids.is_empty() {
        return Err("no ip_adapter.N.to_k_ip.weight: not an IP-Adapter".into());
    }
    ids.sort();
    Ok(ids)
}

/// The diffusers names a file tensor fills (two for a fused `to_kv`).
fn diffusers_names(key: &str) -> Vec<String> {
    let Some(rest) = key.strip_prefix("image_proj.") else {
        return vec![key.to_string()];
    };
    let with = |name: &str| vec![format!("image_proj.{name}")];
    if let Some(leaf) = rest.strip_prefix("proj.") {
        return with(&format!("image_embeds.{leaf}"));
    }
    let Some(layer) = rest.strip_prefix("layers.") else {
        return with(rest);
    };
    let Some((i, part)) = layer.split_once('.') else {
        return with(rest);
    };
    let renamed = match part {
        "0.to_kv.weight" => {
            let at = |n: &str| format!("image_proj.layers.{i}.attn.{n}.weight");
            return vec![at("to_k"), at("to_v")];
        }
        "0.to_q.weight" => "attn.to_q.weight".to_string(),
        "0.to_out.weight" => "attn.to_out.0.weight".to_string(),
        "1.1.weight" => "ff.1.net.0.proj.weight".to_string(),
        "1.3.weight" => "ff.1.net.2.weight".to_string(),
        _ => match part.split_once('.') {
            Some(("0", norm)) => norm.replace("norm1", "ln0").replace("norm2", "ln1"),
            Some(("1", rest)) if rest.starts_with("0.") => format!("ff.{rest}"),
            _ => part.to_string(),
        },
    };
    with(&format!("layers.{i}.{renamed}"))
}

/// The file's shapes under diffusers' names (a fused `to_kv` as two).
fn renamed(shapes: &Shapes) -> Shapes {
    let mut out = Shapes::new();
    for (key, size) in shapes {
        let names = diffusers_names(key);
        let mut part = size.clone();
        if let Some(rows) = part.first_mut() {
            *rows /= names.len() as i64;
        }
        out.extend(names.into_iter().map(|n| (n, part.clone())));
    }
    out
}

/// Whether the file's tensors (by shape) make exactly `vs`'s variables:
/// every missing, unexpected or misshapen one listed.
pub(crate) fn check(vs: &VarStore, shapes: &Shapes) -> Result<(), String> {
    let mut available = renamed(shapes);
    let mut report = LoadReport::default();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in variables {
        match available.remove(&name) {
            None => report.missing.push(name),
            Some(size) if size != var.size() => report.mismatched.push((name, var.size(), size)),
            Some(_) => {}
        }
    }
    report.unexpected = available.into_keys().collect();
    match report == LoadReport::default() {
        true => Ok(()),
        false => Err(format!(
            "its tensors do not make the adapter they name:\n{report}"
        )),
    }
}

/// Copies the file's tensors into `vs` (after [`check`]).
pub(crate) fn fill(vs: &VarStore, tensors: BTreeMap<String, Tensor>) {
    let mut available: BTreeMap<String, Tensor> = BTreeMap::new();
    for (key, tensor) in tensors {
        let names = diffusers_names(&key);
        let parts = tensor.chunk(names.len() as i64, 0);
        available.extend(names.into_iter().zip(parts));
    }
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        if let Some(source) = available.get(&name) {
            var.copy_(source);
        }
    }
}
