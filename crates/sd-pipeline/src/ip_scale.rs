//! An IP-Adapter's scale: one number, or per block as diffusers'
//! `set_ip_adapter_scale` takes a dict (InstantStyle's "style only" is
//! `{"up": {"block_0": [0.0, 1.0, 0.0]}}` on SDXL): `down`/`up` map to a
//! number or to `block_N` entries, each a number or one number per
//! attention of that block; `mid` is a number; what is not named is 0.

use std::collections::BTreeMap;

use sd_unet::CrossAttentionLayer;
use serde_json::Value;

use crate::error::{PipelineError, Result};
use crate::front::Field;

/// How strongly an adapter's attention is added.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum IpScale {
    /// Every layer at this scale (0 turns the adapter off).
    Uniform(f64),
    /// Per block, as diffusers' dict; unnamed blocks at 0.
    Blocks(BlockScales),
}

/// diffusers' per-block scale dict, parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockScales {
    down: Part,
    mid: f64,
    up: Part,
}

/// One side of the UNet: every block alike, or per `block_N`.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    All(f64),
    /// Block index -> one scale for its attentions, or one per attention.
    Blocks(BTreeMap<usize, Vec<f64>>),
}

impl Default for Part {
    fn default() -> Self {
        Part::All(0.0)
    }
}

fn refuse<T>(message: String) -> Result<T> {
    Err(PipelineError::request(Field::IpAdapter, message))
}

fn number(value: &Value, at: &str) -> Result<f64> {
    match value.as_f64() {
        Some(v) if v.is_finite() => Ok(v),
        _ => refuse(format!("scale {at}: {value} is not a number")),
    }
}

impl BlockScales {
    /// Parses diffusers' dict (`{"down": ..., "mid": ..., "up": ...}`).
    pub fn from_json(value: &Value) -> Result<Self> {
        let Some(map) = value.as_object() else {
            return refuse(format!("scale: {value} is neither a number nor a dict"));
        };
        let mut scales = BlockScales::default();
        for (key, value) in map {
            match key.as_str() {
                "mid" => {
                    let value = match value.as_array().map(Vec::as_slice) {
                        Some([one]) => one,
                        _ => value,
                    };
                    scales.mid = number(value, "mid")?;
                }
                "down" => scales.down = Part::from_json(value, "down")?,
                "up" => scales.up = Part::from_json(value, "up")?,
                other => return refuse(format!("scale: '{other}' is not down, mid or up")),
            }
        }
        Ok(scales)
    }

    /// Each of `layers`' scale (diffusers' `startswith` rule: every
    /// transformer block of an attention shares its scale).
    pub(crate) fn resolve(&self, layers: &[CrossAttentionLayer]) -> Result<Vec<f64>> {
        let attentions = |side: &str, block: usize| {
            let prefix = format!("{side}_blocks.{block}.attentions.");
            let names = layers.iter().filter_map(|l| l.name.strip_prefix(&prefix));
            let mut indices: Vec<&str> = names.filter_map(|r| r.split('.').next()).collect();
            indices.dedup();
            indices.len()
        };
        for (side, part) in [("down", &self.down), ("up", &self.up)] {
            let Part::Blocks(blocks) = part else { continue };
            for (&block, values) in blocks {
                let count = attentions(side, block);
                if count == 0 {
                    return refuse(format!(
                        "scale {side}.block_{block}: that block has no attentions"
                    ));
                }
                if values.len() != 1 && values.len() != count {
                    let given = values.len();
                    return refuse(format!(
                        "scale {side}.block_{block}: {given} values for {count} attentions"
                    ));
                }
            }
        }
        layers
            .iter()
            .map(|layer| Ok(self.layer(&layer.name)))
            .collect()
    }

    fn layer(&self, name: &str) -> f64 {
        let parts: Vec<&str> = name.split('.').collect();
        let (part, block, attention) = match parts[..] {
            ["down_blocks", b, "attentions", a, ..] => (&self.down, b, a),
            ["up_blocks", b, "attentions", a, ..] => (&self.up, b, a),
            _ => return self.mid,
        };
        let (block, attention) = (block.parse().unwrap_or(0), attention.parse().unwrap_or(0));
        match part {
            Part::All(v) => *v,
            Part::Blocks(blocks) => match blocks.get(&block).map(Vec::as_slice) {
                None => 0.0,
                Some([one]) => *one,
                Some(values) => values.get(attention).copied().unwrap_or(0.0),
            },
        }
    }
}

impl Part {
    fn from_json(value: &Value, side: &str) -> Result<Self> {
        let Some(map) = value.as_object() else {
            return Ok(Part::All(number(value, side)?));
        };
        let mut blocks = BTreeMap::new();
        for (key, value) in map {
            let at = format!("{side}.{key}");
            let Some(index) = key.strip_prefix("block_").and_then(|i| i.parse().ok()) else {
                return refuse(format!("scale {at}: blocks are named block_N"));
            };
            let values = match value.as_array() {
                Some(list) => list.iter().map(|v| number(v, &at)).collect::<Result<_>>()?,
                None => vec![number(value, &at)?],
            };
            blocks.insert(index, values);
        }
        Ok(Part::Blocks(blocks))
    }
}

impl IpScale {
    /// Each of `layers`' scale.
    pub(crate) fn per_layer(&self, layers: &[CrossAttentionLayer]) -> Result<Vec<f64>> {
        match self {
            IpScale::Uniform(v) => Ok(vec![*v; layers.len()]),
            IpScale::Blocks(blocks) => blocks.resolve(layers),
        }
    }
}
