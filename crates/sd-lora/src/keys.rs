//! What each key of an adapter file names: the model component, the module
//! (in the file's own spelling) and the part of the adapter it holds.
//!
//! Two families of spellings exist in the wild:
//! - kohya / A1111 / LyCORIS: `lora_unet_<module with _>.<part>`, with
//!   `lora_te_` (SD1/SD2) or `lora_te1_` / `lora_te2_` (SDXL) for the text
//!   encoders; parts `lora_down.weight`, `lora_up.weight`, `lora_mid.weight`,
//!   `alpha`, `hada_*`, `lokr_*`, `diff`, `dora_scale`.
//! - diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight`
//!   (`transformer.` for SD3's, and `text_encoder.`, `text_encoder_2.`), older diffusers'
//!   `.lora.down.weight`, `.lora_linear_layer.down.weight` and the
//!   attention-processor form `<block>.processor.to_q_lora.down.weight`.

/// Which model of the pipeline a module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The UNet.
    Unet,
    /// The (first) text encoder: CLIP-L for SD1 and SDXL, OpenCLIP-H for SD2.
    TextEncoder,
    /// SDXL's and SD3's second text encoder (OpenCLIP-bigG).
    TextEncoder2,
    /// SD3's transformer (the denoiser where UNet models have a UNet).
    Transformer,
}

impl Component {
    /// The diffusers attribute name (`unet`, `text_encoder`, `text_encoder_2`).
    pub fn name(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
            Component::Transformer => "transformer",
        }
    }
}

/// A module name as the file spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleName {
    /// kohya's form: the dotted path with every `.` made `_`.
    Underscored(String),
    /// diffusers' dotted path.
    Dotted(String),
}

impl ModuleName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        match self {
            ModuleName::Underscored(s) | ModuleName::Dotted(s) => s,
        }
    }
}

/// What one key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// LoRA's down (A) matrix: (rank, in) or (rank, in, kh, kw).
    Down,
    /// LoRA's up (B) matrix: (out, rank) or (out, rank, 1, 1).
    Up,
    /// LoCon's Tucker core (rank, rank, kh, kw).
    Mid,
    /// The scalar alpha (scale = alpha / rank).
    Alpha,
    /// LoHa factors.
    HadaW1A,
    /// LoHa factors.
    HadaW1B,
    /// LoHa factors.
    HadaW2A,
    /// LoHa factors.
    HadaW2B,
    /// LoHa Tucker cores.
    HadaT1,
    /// LoHa Tucker cores.
    HadaT2,
    /// LoKr's first Kronecker factor, whole.
    LokrW1,
    /// LoKr's first factor as a product.
    LokrW1A,
    /// LoKr's first factor as a product.
    LokrW1B,
    /// LoKr's second Kronecker factor, whole.
    LokrW2,
    /// LoKr's second factor as a product.
    LokrW2A,
    /// LoKr's second factor as a product.
    LokrW2B,
    /// LoKr's Tucker core for the second factor.
    LokrT2,
    /// A full weight difference (LyCORIS "full").
    Diff,
    /// DoRA's magnitude vector (`dora_scale`, PEFT's `lora_magnitude_vector`).
    Dora,
}

/// A parsed key: component, module and part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The model it is for.
    pub component: Component,
    /// The module it changes.
    pub module: ModuleName,
    /// What it holds.
    pub part: Part,
}

const KOHYA_PREFIXES: [(&str, Component); 4] = [
    ("lora_unet_", Component::Unet),
    ("lora_te1_", Component::TextEncoder),
    ("lora_te2_", Component::TextEncoder2),
    ("lora_te_", Component::TextEncoder),
];

const KOHYA_PARTS: [(&str, Part); 20] = [
    ("lora_down.weight", Part::Down),
    ("lora_up.weight", Part::Up),
    ("lora_mid.weight", Part::Mid),
    ("alpha", Part::Alpha),
    ("hada_w1_a", Part::HadaW1A),
    ("hada_w1_b", Part::HadaW1B),
    ("hada_w2_a", Part::HadaW2A),
    ("hada_w2_b", Part::HadaW2B),
    ("hada_t1", Part::HadaT1),
    ("hada_t2", Part::HadaT2),
    ("lokr_w1", Part::LokrW1),
    ("lokr_w1_a", Part::LokrW1A),
    ("lokr_w1_b", Part::LokrW1B),
    ("lokr_w2", Part::LokrW2),
    ("lokr_w2_a", Part::LokrW2A),
    ("lokr_w2_b", Part::LokrW2B),
    ("lokr_t2", Part::LokrT2),
    ("diff", Part::Diff),
    ("dora_scale", Part::Dora),
    ("lora_magnitude_vector", Part::Dora),
];

const DOTTED_PREFIXES: [(&str, Component); 4] = [
    ("unet.", Component::Unet),
    ("transformer.", Component::Transformer),
    ("text_encoder.", Component::TextEncoder),
    ("text_encoder_2.", Component::TextEncoder2),
];

/// Suffixes of diffusers' and PEFT's forms, longest first.
const DOTTED_PARTS: [(&str, Part); 12] = [
    (".lora_linear_layer.down.weight", Part::Down),
    (".lora_linear_layer.up.weight", Part::Up),
    (".lora_A.default.weight", Part::Down),
    (".lora_B.default.weight", Part::Up),
    (".lora_magnitude_vector.weight", Part::Dora),
    (".lora_magnitude_vector", Part::Dora),
    (".lora.down.weight", Part::Down),
    (".lora.up.weight", Part::Up),
    (".lora_A.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".dora_scale", Part::Dora),
    (".alpha", Part::Alpha),
];

/// Parses one file key; `None` for a key in no known form (the caller
/// reports it).
pub fn parse(key: &str) -> Option<Key> {
    for (prefix, component) in KOHYA_PREFIXES {
        if let Some(rest) = key.strip_prefix(prefix) {
            let (module, part) = rest.split_once('.')?;
            let part = KOHYA_PARTS.iter().find(|(p, _)| *p == part)?.1;
            if module.is_empty() {
                return None;
            }
            return Some(Key {
                component,
                module: ModuleName::Underscored(module.to_string()),
                part,
            });
        }
    }
    let (component, rest) = DOTTED_PREFIXES
        .iter()
        .find_map(|(prefix, c)| key.strip_prefix(prefix).map(|rest| (*c, rest)))
        // diffusers' oldest files (save_attn_procs) hold the UNet's
        // processors without a prefix
        .unwrap_or((Component::Unet, key));
    if let Some(key) = attention_processor(component, rest) {
        return Some(key);
    }
    let (suffix, part) = DOTTED_PARTS.iter().find(|(s, _)| rest.ends_with(s))?;
    let module = &rest[..rest.len() - suffix.len()];
    if module.is_empty() {
        return None;
    }
    Some(Key {
        component,
        module: ModuleName::Dotted(module.to_string()),
        part: *part,
    })
}

/// The attention-processor form: `<attn>.processor.to_q_lora.down.weight`
/// (UNet) or `<self_attn>.to_q_lora.down.weight` (text encoder), named after
/// the projection it changes.
fn attention_processor(component: Component, rest: &str) -> Option<Key> {
    let (head, part) = if let Some(head) = rest.strip_suffix("_lora.down.weight") {
        (head, Part::Down)
    } else if let Some(head) = rest.strip_suffix("_lora.up.weight") {
        (head, Part::Up)
    } else {
        return None;
    };
    let (block, projection) = head.rsplit_once('.')?;
    let unet = component == Component::Unet;
    let module = match (projection, unet) {
        ("to_q" | "to_k" | "to_v", true) => {
            format!("{}.{projection}", block.strip_suffix(".processor")?)
        }
        ("to_out", true) => format!("{}.to_out.0", block.strip_suffix(".processor")?),
        ("to_q", false) => format!("{block}.q_proj"),
        ("to_k", false) => format!("{block}.k_proj"),
        ("to_v", false) => format!("{block}.v_proj"),
        ("to_out", false) => format!("{block}.out_proj"),
        _ => return None,
    };
    Some(Key {
        component,
        module: ModuleName::Dotted(module),
        part,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dotted(component: Component, module: &str, part: Part) -> Option<Key> {
        Some(Key {
            component,
            module: ModuleName::Dotted(module.into()),
            part,
        })
    }

    #[test]
    fn every_spelling_names_its_module() {
        let q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
        assert_eq!(
            parse(&format!("unet.{q}.lora_A.weight")),
            dotted(Component::Unet, q, Part::Down)
        );
        assert_eq!(
            parse(&format!("unet.{q}.lora.up.weight")),
            dotted(Component::Unet, q, Part::Up)
        );
        assert_eq!(
            parse("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"),
            dotted(Component::Unet, q, Part::Down)
        );
        assert_eq!(
            parse(
                "mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight"
            ),
            dotted(
                Component::Unet,
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
                Part::Up
            )
        );
        assert_eq!(
            parse("text_encoder.text_model.encoder.layers.3.self_attn.to_out_lora.down.weight"),
            dotted(
                Component::TextEncoder,
                "text_model.encoder.layers.3.self_attn.out_proj",
                Part::Down
            )
        );
        assert_eq!(
            parse("text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight"),
            dotted(
                Component::TextEncoder2,
                "text_model.encoder.layers.0.mlp.fc1",
                Part::Up
            )
        );
        let kohya = parse("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha").unwrap();
        assert_eq!(kohya.component, Component::TextEncoder2);
        assert_eq!(
            kohya.module,
            ModuleName::Underscored("text_model_encoder_layers_0_mlp_fc1".into())
        );
        assert_eq!(kohya.part, Part::Alpha);
        assert_eq!(
            parse("lora_unet_input_blocks_4_1_proj_in.hada_w1_a")
                .unwrap()
                .part,
            Part::HadaW1A
        );
        assert_eq!(
            parse("lora_te_x.lokr_t2").unwrap().component,
            Component::TextEncoder
        );
    }

    #[test]
    fn unknown_forms_are_none() {
        for key in [
            "lora_unet_x.lora_sideways.weight",
            "lora_unet_.alpha",
            "lora_unet_nodot",
            "unet.conv_in.weight",
            "something",
            ".lora_A.weight",
            "unet..processor.to_z_lora.down.weight",
        ] {
            assert_eq!(parse(key), None, "{key}");
        }
    }
}
