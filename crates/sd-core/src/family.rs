//! Which Stable Diffusion family a width of text states belongs to, for
//! messages about adapters and ControlNets made for another model.

/// "SD 1.x (768-wide cross-attention)" and the like.
pub fn describe_cross_attention(width: i64) -> String {
    match width {
        768 => "SD 1.x (768-wide cross-attention)".into(),
        1024 => "SD 2.x (1024-wide cross-attention)".into(),
        2048 => "SDXL (2048-wide cross-attention)".into(),
        w => format!("a model with {w}-wide cross-attention"),
    }
}
