//! The shared blocks, built at full size under their real key prefixes, have
//! exactly the names and shapes the real SD1.5 / SDXL files have there
//! (reference/manifests, made by the harness from the real configs).

use std::collections::BTreeMap;

use sd_core::layers::{Attention, AttentionConfig, ResnetBlock2D, ResnetConfig};
use sd_testkit::manifest::Manifest;
use sd_testkit::parity::reference_dir;
use tch::{nn::VarStore, Device};

fn manifest(model: &str, component: &str) -> Manifest {
    Manifest::read(reference_dir().join(format!("manifests/{model}/{component}.json"))).unwrap()
}

/// The entries of `manifest` under `prefix.` (one block's tensors).
fn under(manifest: &Manifest, prefix: &str) -> Manifest {
    let tensors: BTreeMap<_, _> = manifest
        .tensors
        .iter()
        .filter(|(name, _)| name.starts_with(&format!("{prefix}.")))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    assert!(!tensors.is_empty(), "no tensors under {prefix}");
    Manifest {
        tensors,
        optional: BTreeMap::new(),
    }
}

fn assert_same(expected: &Manifest, vs: &VarStore) {
    let diff = expected.diff(&Manifest::of_var_store(vs));
    assert!(diff.is_empty(), "{diff:?}");
}

#[test]
fn resnet_blocks_match_real_unet_and_vae_names() {
    let unet = manifest("sd15", "unet");
    let vs = VarStore::new(Device::Cpu);
    // A block that changes width (320 -> 640) has a conv_shortcut.
    let prefix = "down_blocks.1.resnets.0";
    ResnetBlock2D::new(
        vs.root() / "down_blocks" / 1 / "resnets" / 0,
        &ResnetConfig::new(320, 640, Some(1280)),
    )
    .unwrap();
    assert_same(&under(&unet, prefix), &vs);

    let vae = manifest("sd15", "vae");
    let vs = VarStore::new(Device::Cpu);
    ResnetBlock2D::new(
        vs.root() / "decoder" / "up_blocks" / 3 / "resnets" / 0,
        &ResnetConfig::new(256, 128, None),
    )
    .unwrap();
    assert_same(&under(&vae, "decoder.up_blocks.3.resnets.0"), &vs);
}

#[test]
fn attention_matches_real_unet_and_vae_names() {
    let vae = manifest("sd15", "vae");
    let vs = VarStore::new(Device::Cpu);
    let config = AttentionConfig {
        bias: true,
        group_norm: Some((32, 1e-6)),
        residual_connection: true,
        ..AttentionConfig::transformer(512, None, 1, 512)
    };
    Attention::new(
        vs.root() / "encoder" / "mid_block" / "attentions" / 0,
        &config,
    )
    .unwrap();
    assert_same(&under(&vae, "encoder.mid_block.attentions.0"), &vs);

    let unet = manifest("sdxl", "unet");
    let vs = VarStore::new(Device::Cpu);
    let block = vs.root() / "down_blocks" / 2 / "attentions" / 1 / "transformer_blocks" / 9;
    Attention::new(
        &block / "attn2",
        &AttentionConfig::transformer(1280, Some(2048), 20, 64),
    )
    .unwrap();
    let expected = under(
        &unet,
        "down_blocks.2.attentions.1.transformer_blocks.9.attn2",
    );
    assert_same(&expected, &vs);
}

/// Parameter counts published for the real models (UNet 859.52M for SD1.5,
/// 2.567B for SDXL, CLIP ViT-L text 123.06M, ...): the manifests, made from
/// configs, must add up to them.
#[test]
fn manifests_have_the_published_parameter_counts() {
    for (model, component, params) in [
        ("sd15", "text_encoder", 123_060_480i64),
        ("sd15", "unet", 859_520_964),
        ("sd15", "vae", 83_653_863),
        ("sd21", "text_encoder", 340_387_840),
        ("sd21", "unet", 865_910_724),
        ("sd21", "vae", 83_653_863),
        ("sdxl", "text_encoder", 123_060_480),
        ("sdxl", "text_encoder_2", 694_659_840),
        ("sdxl", "unet", 2_567_463_684),
        ("sdxl", "vae", 83_653_863),
    ] {
        let m = manifest(model, component);
        let total: i64 = m.tensors.values().map(|s| s.iter().product::<i64>()).sum();
        assert_eq!(total, params, "{model}/{component}");
    }
    // Text encoders are keyed as in the real (transformers 4) files.
    let te = manifest("sd15", "text_encoder");
    assert!(te
        .tensors
        .contains_key("text_model.encoder.layers.11.mlp.fc2.weight"));
    assert_eq!(
        te.optional["text_model.embeddings.position_ids"],
        vec![1, 77]
    );
}
