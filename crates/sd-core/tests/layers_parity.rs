//! The shared blocks against diffusers' ResnetBlock2D and Attention
//! (reference/harness_outputs.py, write_layers): same weights, same inputs.

use sd_core::layers::{Attention, AttentionConfig, ResnetBlock2D, ResnetConfig};
use sd_core::weights::{load_safetensors, LoadOptions};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{nn::VarStore, Device};

struct Blocks {
    resnet: ResnetBlock2D,
    vae_attn: Attention,
    cross_attn: Attention,
    self_attn: Attention,
}

fn build(vs: &VarStore) -> Blocks {
    let root = vs.root();
    let mut resnet = ResnetConfig::new(16, 32, Some(24));
    resnet.groups = 8;
    let vae_attn = AttentionConfig {
        bias: true,
        group_norm: Some((8, 1e-6)),
        residual_connection: true,
        ..AttentionConfig::transformer(32, None, 1, 32)
    };
    Blocks {
        resnet: ResnetBlock2D::new(&root / "resnet", &resnet).unwrap(),
        vae_attn: Attention::new(&root / "vae_attn", &vae_attn).unwrap(),
        cross_attn: Attention::new(
            &root / "cross_attn",
            &AttentionConfig::transformer(32, Some(8), 4, 8),
        )
        .unwrap(),
        self_attn: Attention::new(
            &root / "self_attn",
            &AttentionConfig::transformer(32, None, 2, 16),
        )
        .unwrap(),
    }
}

#[test]
fn shared_blocks_match_diffusers() {
    let outputs = reference_dir().join("fixtures/outputs");
    let vs = VarStore::new(Device::Cpu);
    let blocks = build(&vs);
    // Every tensor of the file has a variable and vice versa: the names are diffusers'.
    let report = load_safetensors(
        &vs,
        &[outputs.join("layers_weights.safetensors")],
        &LoadOptions::default(),
    )
    .expect("all names and shapes fit");
    assert!(report.unexpected.is_empty());

    let io = read_tensors(outputs.join("layers_io.safetensors")).unwrap();
    let t = |name: &str| take(&io, name).unwrap();
    let _guard = tch::no_grad_guard();
    assert_matches(
        "resnet",
        &blocks
            .resnet
            .forward(&t("resnet.input"), Some(&t("resnet.temb"))),
        &t("resnet.output"),
        1,
    );
    assert_matches(
        "vae_attn",
        &blocks.vae_attn.forward(&t("vae_attn.input"), None),
        &t("vae_attn.output"),
        1,
    );
    assert_matches(
        "cross_attn",
        &blocks
            .cross_attn
            .forward(&t("cross_attn.input"), Some(&t("cross_attn.context"))),
        &t("cross_attn.output"),
        1,
    );
    assert_matches(
        "self_attn",
        &blocks.self_attn.forward(&t("cross_attn.input"), None),
        &t("self_attn.output"),
        1,
    );
}

#[test]
fn wrong_weights_are_caught_by_the_comparison() {
    // The same blocks left at their random initialisation must not pass.
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let blocks = build(&vs);
    sd_core::nn::init_for_training(&vs);
    let io = read_tensors(reference_dir().join("fixtures/outputs/layers_io.safetensors")).unwrap();
    let t = |name: &str| take(&io, name).unwrap();
    let out = blocks
        .resnet
        .forward(&t("resnet.input"), Some(&t("resnet.temb")));
    let expected = t("resnet.output");
    let bound = sd_testkit::parity::chain_tolerance_for(tch::Kind::Float, 1, &expected);
    assert!(sd_testkit::parity::check_close("resnet", &out, &expected, bound).is_err());
}
