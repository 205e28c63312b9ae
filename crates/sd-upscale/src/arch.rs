//! Which upscaler a file holds, read off its weights as spandrel reads it:
//! ESRGAN's RRDBNet in the original layout (`model.0.weight`,
//! `model.1.sub.0.RDB1.conv1.0.weight`), the newer BasicSR/Real-ESRGAN one
//! (`conv_first`, `body.0.rdb1.conv1`, `conv_body`, `conv_up1`, `conv_hr`,
//! `conv_last`) and BSRGAN's (`RRDB_trunk`, `trunk_conv`, `upconv1`,
//! `HRconv`); ESRGAN+ (`conv1x1`); and Real-ESRGAN's SRVGGNetCompact
//! (`body.0.weight` ... `body.N.bias`). The newer layouts are renamed into
//! the original one, which the model is built with.

use std::collections::BTreeMap;

/// Tensor names and shapes.
pub type Shapes = BTreeMap<String, Vec<i64>>;

/// ESRGAN's RRDBNet, as its weights describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EsrganConfig {
    /// Channels in (after any pixel unshuffle: 12 or 48 for Real-ESRGAN's x2 and x1).
    pub in_channels: i64,
    /// Channels out.
    pub out_channels: i64,
    /// Feature width (64 in the released models).
    pub features: i64,
    /// RRDB blocks (23 in the released models).
    pub blocks: i64,
    /// 2x nearest-neighbour upsamplings (2 for a 4x network).
    pub upsamplings: i64,
    /// ESRGAN+'s extra 1x1 paths.
    pub plus: bool,
    /// Real-ESRGAN's pixel unshuffle before the network (2 for x2, 4 for x1).
    pub unshuffle: Option<i64>,
}

/// Real-ESRGAN's SRVGGNetCompact (`realesr-general-x4v3`, `realesr-animevideov3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactConfig {
    /// Channels in.
    pub in_channels: i64,
    /// Channels out.
    pub out_channels: i64,
    /// Feature width.
    pub features: i64,
    /// 3x3 convolutions between the first and the last.
    pub convs: i64,
    /// The pixel shuffle's factor: the scale.
    pub scale: i64,
}

/// An upscaler architecture with its sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Architecture {
    /// ESRGAN / Real-ESRGAN / BSRGAN / ESRGAN+.
    Esrgan(EsrganConfig),
    /// Real-ESRGAN's compact VGG-style network.
    Compact(CompactConfig),
}

impl Architecture {
    /// The factor by which it enlarges an image.
    pub fn scale(&self) -> i64 {
        match self {
            Architecture::Esrgan(c) => (1 << c.upsamplings) / c.unshuffle.unwrap_or(1),
            Architecture::Compact(c) => c.scale,
        }
    }

    /// The short name spandrel gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Esrgan(_) => "ESRGAN",
            Architecture::Compact(_) => "RealESRGAN Compact",
        }
    }
}

/// The number of entries of the sequence `prefix.{i}.…` (largest index + 1).
fn seq_len(shapes: &Shapes, prefix: &str) -> i64 {
    let index = |k: &String| {
        k.strip_prefix(prefix)?
            .split('.')
            .next()?
            .parse::<i64>()
            .ok()
    };
    shapes.keys().filter_map(index).max().map_or(0, |m| m + 1)
}

/// Renames a BasicSR/Real-ESRGAN or BSRGAN RRDBNet's keys into ESRGAN's
/// original layout (spandrel's `_new_to_old_arch`); other files are returned
/// as they are.
pub fn esrgan_original_names(names: &[String]) -> BTreeMap<String, String> {
    let has = |k: &str| names.iter().any(|n| n == k);
    if !has("conv_first.weight") {
        return names.iter().map(|n| (n.clone(), n.clone())).collect();
    }
    let upconv = |n: &str| -> Option<i64> {
        let rest = n.strip_prefix("conv_up").or(n.strip_prefix("upconv"))?;
        rest.split('.').next()?.parse().ok()
    };
    let last_up = 3 * names.iter().filter_map(|n| upconv(n)).max().unwrap_or(0);
    let blocks = names
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("body.").or(n.strip_prefix("RRDB_trunk."))?;
            rest.split('.').next()?.parse::<i64>().ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    let rename = |n: &str| -> Option<String> {
        let (module, param) = n.rsplit_once('.')?;
        let name = match module {
            "conv_first" => "model.0".to_string(),
            "trunk_conv" | "conv_body" => format!("model.1.sub.{blocks}"),
            "HRconv" | "conv_hr" => format!("model.{}", last_up + 2),
            "conv_last" => format!("model.{}", last_up + 4),
            _ if upconv(n).is_some() => format!("model.{}", 3 * upconv(n)?),
            _ => {
                let rest = module
                    .strip_prefix("body.")
                    .or(module.strip_prefix("RRDB_trunk."))?;
                let (block, rest) = rest.split_once('.')?;
                let (rdb, conv) = rest.split_once('.')?;
                let rdb = rdb.strip_prefix("rdb").or(rdb.strip_prefix("RDB"))?;
                format!("model.1.sub.{block}.RDB{rdb}.{conv}.0")
            }
        };
        Some(format!("{name}.{param}"))
    };
    names
        .iter()
        .filter_map(|n| Some((rename(n)?, n.clone())))
        .collect()
}

/// The architecture of the weights `shapes` (original ESRGAN names, see
/// [`esrgan_original_names`]); `Err` says why none fits.
pub fn detect(shapes: &Shapes) -> Result<Architecture, String> {
    let get = |k: &str| shapes.get(k).ok_or_else(|| format!("no tensor '{k}'"));
    if shapes.contains_key("model.0.weight")
        && (shapes.contains_key("model.1.sub.0.RDB1.conv1.0.weight")
            || shapes.contains_key("model.1.sub.0.RDB1.conv1x1.weight"))
    {
        let first = get("model.0.weight")?;
        let length = seq_len(shapes, "model.");
        let last = get(&format!("model.{}.weight", length - 1))?;
        let (in_channels, out_channels) = (first[1], last[0]);
        // Real-ESRGAN's x2 and x1 models see the image pixel-unshuffled
        let unshuffle = [(4, 2), (16, 4)]
            .into_iter()
            .find(|(f, _)| in_channels == out_channels * f)
            .map(|(_, s)| s);
        let upsamplings = (length - 5) / 3;
        if length < 5 || (length - 5) % 3 != 0 {
            return Err(format!(
                "an RRDBNet of {length} top-level layers fits no scale"
            ));
        }
        return Ok(Architecture::Esrgan(EsrganConfig {
            in_channels,
            out_channels,
            features: first[0],
            blocks: seq_len(shapes, "model.1.sub.") - 1,
            upsamplings,
            plus: shapes.keys().any(|k| k.contains(".conv1x1.")),
            unshuffle,
        }));
    }
    if shapes.contains_key("body.0.weight") && shapes.contains_key("body.1.weight") {
        let last = seq_len(shapes, "body.") - 1;
        let first = get("body.0.weight")?;
        let shuffled = get(&format!("body.{last}.bias"))?[0];
        let in_channels = first[1];
        let (scale, out_channels) = [in_channels, 3, 4, 1]
            .into_iter()
            .find_map(|c| {
                let s = (shuffled / c) as f64;
                (shuffled % c == 0 && s.sqrt().fract() == 0.0).then(|| (s.sqrt() as i64, c))
            })
            .ok_or_else(|| format!("a last layer of {shuffled} channels is no pixel shuffle"))?;
        return Ok(Architecture::Compact(CompactConfig {
            in_channels,
            out_channels,
            features: first[0],
            convs: (last - 2) / 2,
            scale,
        }));
    }
    Err("not an upscaler this crate knows (ESRGAN/Real-ESRGAN RRDBNet, SRVGGNetCompact)".into())
}
