//! Merging into a small hand-built model: the update each adapter kind
//! makes (against the formula written out here), exact restores in f16
//! after many cycles, and the errors and reports for files that do not fit.

use std::path::{Path, PathBuf};

use sd_lora::{Component, LoraError, LoraFile, Merged, Target, Targets};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

/// A model with a linear `blocks.0.attn2.to_k` (6 x 4, as if cross-attention
/// were 4 wide), a 3x3 conv `blocks.0.conv1` (6 x 2 x 3 x 3) and a text
/// encoder `text_model.encoder.layers.0.self_attn.q_proj` (4 x 4).
fn model(kind: Kind) -> (VarStore, VarStore) {
    tch::manual_seed(7);
    let mut unet = VarStore::new(Device::Cpu);
    let block = unet.root() / "blocks" / "0";
    let randn = Init::Randn {
        mean: 0.,
        stdev: 1.,
    };
    let _ = (&block / "attn2" / "to_k").var("weight", &[6, 4], randn);
    let _ = (&block / "conv1").var("weight", &[6, 2, 3, 3], randn);
    let _ = (&block / "conv1").var("bias", &[6], randn);
    unet.set_kind(kind);
    let mut text = VarStore::new(Device::Cpu);
    let _ = (text.root() / "text_model" / "encoder" / "layers" / "0" / "self_attn" / "q_proj").var(
        "weight",
        &[4, 4],
        randn,
    );
    text.set_kind(kind);
    (unet, text)
}

fn targets(unet: &VarStore, text: &VarStore) -> Targets {
    Targets::new(vec![
        Target {
            component: Component::Unet,
            store: unet,
            aliases: vec![(
                "input_blocks.1.1.attn2.to_k".into(),
                sd_core::weights::KeyMap::To("blocks.0.attn2.to_k.weight".into()),
            )],
        },
        Target {
            component: Component::TextEncoder,
            store: text,
            aliases: vec![],
        },
    ])
}

fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    Tensor::write_safetensors(tensors, &path).unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-lora-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn weight(store: &VarStore, name: &str) -> Tensor {
    store.variables()[name].detach().copy()
}

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

#[test]
fn each_kind_adds_its_formula_and_restores_exactly() {
    let dir = temp_dir("kinds");
    let (down, up) = (randn(&[2, 4]), randn(&[6, 2]));
    let (cd, cu) = (randn(&[3, 2, 3, 3]), randn(&[6, 3, 1, 1]));
    let (q_down, q_up) = (randn(&[1, 4]), randn(&[4, 1]));
    let kohya = write(
        &dir,
        "kohya.safetensors",
        &[
            // kohya SD1 names, and the LDM alias for the same module in another file below
            (
                "lora_unet_blocks_0_attn2_to_k.lora_down.weight",
                down.shallow_clone(),
            ),
            (
                "lora_unet_blocks_0_attn2_to_k.lora_up.weight",
                up.shallow_clone(),
            ),
            ("lora_unet_blocks_0_attn2_to_k.alpha", Tensor::from(1.0f32)),
            (
                "lora_unet_blocks_0_conv1.lora_down.weight",
                cd.shallow_clone(),
            ),
            (
                "lora_unet_blocks_0_conv1.lora_up.weight",
                cu.shallow_clone(),
            ),
            ("lora_unet_blocks_0_conv1.alpha", Tensor::from(6.0f32)),
            (
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                q_down.shallow_clone(),
            ),
            (
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
                q_up.shallow_clone(),
            ),
        ],
    );
    let (unet, text) = model(Kind::Float);
    let (k0, c0, q0) = (
        weight(&unet, "blocks.0.attn2.to_k.weight"),
        weight(&unet, "blocks.0.conv1.weight"),
        weight(&text, "text_model.encoder.layers.0.self_attn.q_proj.weight"),
    );
    let targets = targets(&unet, &text);
    let mut merged = Merged::new();
    let report = merged
        .apply(&LoraFile::open(&kohya).unwrap(), 0.5, &targets)
        .unwrap();
    assert_eq!(report.applied_total(), 3);
    assert!(report.skipped.is_empty());
    let k = weight(&unet, "blocks.0.attn2.to_k.weight");
    let expected = &k0 + up.matmul(&down) * (0.5 * 1.0 / 2.0);
    assert_eq!(f64::try_from((&k - &expected).abs().max()).unwrap(), 0.0);
    let conv = weight(&unet, "blocks.0.conv1.weight");
    let product = cu
        .flatten(1, -1)
        .matmul(&cd.flatten(1, -1))
        .reshape([6, 2, 3, 3]);
    let diff = (&conv - (&c0 + product * (0.5 * 6.0 / 3.0))).abs().max();
    assert!(f64::try_from(diff).unwrap() < 1e-5, "conv LoRA");
    let q = weight(&text, "text_model.encoder.layers.0.self_attn.q_proj.weight");
    let diff = (&q - (&q0 + q_up.matmul(&q_down) * 0.5)).abs().max();
    assert_eq!(f64::try_from(diff).unwrap(), 0.0, "no alpha: scale 1");
    assert_eq!(merged.saved_bytes(), (24 + 108 + 16) * 4);

    // LoHa and LoKr on the same weight, by their formulas
    let (a1, b1, a2, b2) = (
        randn(&[6, 2]),
        randn(&[2, 4]),
        randn(&[6, 2]),
        randn(&[2, 4]),
    );
    let loha = write(
        &dir,
        "loha.safetensors",
        &[
            (
                "lora_unet_input_blocks_1_1_attn2_to_k.hada_w1_a",
                a1.shallow_clone(),
            ),
            (
                "lora_unet_input_blocks_1_1_attn2_to_k.hada_w1_b",
                b1.shallow_clone(),
            ),
            (
                "lora_unet_input_blocks_1_1_attn2_to_k.hada_w2_a",
                a2.shallow_clone(),
            ),
            (
                "lora_unet_input_blocks_1_1_attn2_to_k.hada_w2_b",
                b2.shallow_clone(),
            ),
            (
                "lora_unet_input_blocks_1_1_attn2_to_k.alpha",
                Tensor::from(1.0f32),
            ),
        ],
    );
    let (w1, w2a, w2b) = (randn(&[2, 2]), randn(&[3, 1]), randn(&[1, 2]));
    let lokr = write(
        &dir,
        "lokr.safetensors",
        &[
            ("lora_unet_blocks_0_attn2_to_k.lokr_w1", w1.shallow_clone()),
            (
                "lora_unet_blocks_0_attn2_to_k.lokr_w2_a",
                w2a.shallow_clone(),
            ),
            (
                "lora_unet_blocks_0_attn2_to_k.lokr_w2_b",
                w2b.shallow_clone(),
            ),
            ("lora_unet_blocks_0_attn2_to_k.alpha", Tensor::from(3.0f32)),
        ],
    );
    merged.restore(&targets).unwrap();
    merged
        .apply(&LoraFile::open(&loha).unwrap(), 1.0, &targets)
        .unwrap();
    merged
        .apply(&LoraFile::open(&lokr).unwrap(), 1.0, &targets)
        .unwrap();
    let hada = a1.matmul(&b1) * a2.matmul(&b2) * 0.5;
    let kron = w1.kron(&w2a.matmul(&w2b)) * 3.0;
    let diff = (weight(&unet, "blocks.0.attn2.to_k.weight") - (&k0 + hada + kron))
        .abs()
        .max();
    assert!(f64::try_from(diff).unwrap() < 1e-5, "LoHa + LoKr");
    merged.restore(&targets).unwrap();
    assert!(merged.is_empty());
    assert!(weight(&unet, "blocks.0.attn2.to_k.weight").equal(&k0));
    assert!(weight(&unet, "blocks.0.conv1.weight").equal(&c0));
    assert!(weight(&text, "text_model.encoder.layers.0.self_attn.q_proj.weight").equal(&q0));
}

#[test]
fn half_precision_weights_do_not_drift_over_cycles() {
    let dir = temp_dir("cycles");
    let lora = write(
        &dir,
        "a.safetensors",
        &[
            ("unet.blocks.0.attn2.to_k.lora_A.weight", randn(&[2, 4])),
            ("unet.blocks.0.attn2.to_k.lora_B.weight", randn(&[6, 2])),
        ],
    );
    let lora = LoraFile::open(&lora).unwrap();
    let (unet, text) = model(Kind::Half);
    let before = weight(&unet, "blocks.0.attn2.to_k.weight");
    let targets = targets(&unet, &text);
    let mut merged = Merged::new();
    let mut first = None;
    for _ in 0..50 {
        merged.apply(&lora, 0.37, &targets).unwrap();
        let now = weight(&unet, "blocks.0.attn2.to_k.weight");
        assert!(!now.equal(&before));
        // the same merge each time: no accumulated rounding
        assert!(first.get_or_insert_with(|| now.copy()).equal(&now));
        merged.restore(&targets).unwrap();
        assert!(weight(&unet, "blocks.0.attn2.to_k.weight").equal(&before));
    }
}

#[test]
fn files_that_do_not_fit_name_what_is_wrong() {
    let dir = temp_dir("errors");
    let (unet, text) = model(Kind::Float);
    let before = weight(&unet, "blocks.0.attn2.to_k.weight");
    let targets = targets(&unet, &text);
    let mut merged = Merged::new();

    // a module of the wrong shape: the key and both shapes, nothing changed
    let wrong = write(
        &dir,
        "wrong.safetensors",
        &[
            (
                "lora_unet_blocks_0_attn2_to_k.lora_down.weight",
                randn(&[2, 5]),
            ),
            (
                "lora_unet_blocks_0_attn2_to_k.lora_up.weight",
                randn(&[6, 2]),
            ),
        ],
    );
    let err = merged
        .apply(&LoraFile::open(&wrong).unwrap(), 1.0, &targets)
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, LoraError::Shape { .. }), "{message}");
    assert!(
        message.contains("blocks_0_attn2_to_k.down")
            && message.contains("[6, 4]")
            && message.contains("[2, 5]"),
        "{message}"
    );
    assert!(weight(&unet, "blocks.0.attn2.to_k.weight").equal(&before));

    // made for another model: a few names and the family its widths suggest
    let other = write(&dir, "sdxl.safetensors", &[
        ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn2_to_k.lora_down.weight", randn(&[4, 2048])),
        ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn2_to_k.lora_up.weight", randn(&[1280, 4])),
        ("lora_te2_text_model_encoder_layers_31_mlp_fc1.lora_down.weight", randn(&[4, 8])),
        ("lora_te2_text_model_encoder_layers_31_mlp_fc1.lora_up.weight", randn(&[8, 4])),
    ]);
    let message = merged
        .apply(&LoraFile::open(&other).unwrap(), 1.0, &targets)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("SDXL (2048-wide") && message.contains("down_blocks_2_attentions_1"),
        "{message}"
    );

    // unknown keys and incomplete modules are reported, not dropped
    let partial = write(
        &dir,
        "partial.safetensors",
        &[
            (
                "lora_unet_blocks_0_attn2_to_k.lora_down.weight",
                randn(&[2, 4]),
            ),
            (
                "lora_unet_blocks_0_attn2_to_k.lora_up.weight",
                randn(&[6, 2]),
            ),
            (
                "lora_unet_blocks_0_conv1.lora_down.weight",
                randn(&[2, 2, 3, 3]),
            ),
            ("lora_unet_nowhere.lora_down.weight", randn(&[2, 4])),
            ("lora_unet_nowhere.lora_up.weight", randn(&[6, 2])),
            ("model.weird_key", randn(&[1])),
        ],
    );
    let report = merged
        .apply(&LoraFile::open(&partial).unwrap(), 1.0, &targets)
        .unwrap();
    assert_eq!(report.applied_total(), 1);
    let skipped: Vec<&str> = report.skipped.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(skipped.len(), 3, "{:?}", report.skipped);
    assert!(skipped.contains(&"model.weird_key"));
    assert!(skipped.contains(&"unet:blocks_0_conv1"));
    assert!(skipped.contains(&"unet:nowhere"));
    merged.restore(&targets).unwrap();

    // DoRA, pickles
    let dora = write(
        &dir,
        "dora.safetensors",
        &[
            (
                "lora_unet_blocks_0_attn2_to_k.lora_down.weight",
                randn(&[2, 4]),
            ),
            (
                "lora_unet_blocks_0_attn2_to_k.lora_up.weight",
                randn(&[6, 2]),
            ),
            ("lora_unet_blocks_0_attn2_to_k.dora_scale", randn(&[6, 1])),
        ],
    );
    assert!(LoraFile::open(&dora)
        .unwrap_err()
        .to_string()
        .contains("DoRA"));
    let pickle = dir.join("old.pt");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    assert!(LoraFile::open(&pickle)
        .unwrap_err()
        .to_string()
        .contains("pickle"));
    let infinite = write(
        &dir,
        "nan.safetensors",
        &[
            (
                "lora_unet_blocks_0_attn2_to_k.lora_down.weight",
                randn(&[2, 4]),
            ),
            (
                "lora_unet_blocks_0_attn2_to_k.lora_up.weight",
                randn(&[6, 2]),
            ),
            (
                "lora_unet_blocks_0_attn2_to_k.alpha",
                Tensor::from(f32::NAN),
            ),
        ],
    );
    assert!(LoraFile::open(&infinite)
        .unwrap_err()
        .to_string()
        .contains("alpha"));
    assert!(merged
        .apply(&LoraFile::open(&partial).unwrap(), f64::INFINITY, &targets)
        .is_err());
}
