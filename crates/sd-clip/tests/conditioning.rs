//! Prompt conditioning as the pipelines use it: SDXL's concatenated
//! penultimate layers and projected pool, long-prompt windows, weighting.

use sd_clip::{encode, ClipTextModel, ClipTokenizer, EmbeddingLayer, PromptOptions};
use sd_core::DiffusersModel;
use sd_testkit::parity::{
    assert_close, assert_matches, read_tensors, reference_dir, take, Tolerance,
};
use tch::{Device, Kind, Tensor};

fn pair(sub: &str) -> (ClipTokenizer, ClipTextModel) {
    let dir = reference_dir().join("fixtures/tiny-sdxl");
    (
        ClipTokenizer::from_folder(dir.join(format!("tokenizer{sub}"))).unwrap(),
        ClipTextModel::from_folder(
            dir.join(format!("text_encoder{sub}")),
            Device::Cpu,
            Kind::Float,
            None,
        )
        .unwrap(),
    )
}

#[test]
fn sdxl_conditioning_is_both_penultimate_layers_and_the_projected_pool() {
    let reference =
        read_tensors(reference_dir().join("fixtures/outputs/text_encoders.safetensors")).unwrap();
    let _guard = tch::no_grad_guard();
    let (t1, m1) = pair("");
    let (t2, m2) = pair("_2");
    let prompt = "a photo of a cat";
    let a = encode(
        &t1,
        &m1,
        prompt,
        EmbeddingLayer::Penultimate,
        PromptOptions::default(),
        1,
    )
    .unwrap();
    let b = encode(
        &t2,
        &m2,
        prompt,
        EmbeddingLayer::Penultimate,
        PromptOptions::default(),
        1,
    )
    .unwrap();
    let hidden = Tensor::cat(&[a.hidden, b.hidden], -1);
    // diffusers: cat(te1.hidden_states[-2], te2.hidden_states[-2]); pooled = te2.text_embeds
    let h1 = take(&reference, "sdxl_1.hidden_states").unwrap();
    let h2 = take(&reference, "sdxl_2.hidden_states").unwrap();
    let expected = Tensor::cat(
        &[
            h1.get(h1.size()[0] - 2).get(0),
            h2.get(h2.size()[0] - 2).get(0),
        ],
        -1,
    )
    .unsqueeze(0);
    assert_matches("sdxl hidden", &hidden, &expected, 1);
    let pooled = take(&reference, "sdxl_2.text_embeds")
        .unwrap()
        .get(0)
        .unsqueeze(0);
    // (the reference encoded three prompts in one batch: the projection's
    // GEMM rounds otherwise for one)
    sd_testkit::parity::assert_matches_reordered("sdxl pooled", &b.pooled, &pooled, 1);
    assert_eq!(hidden.size(), vec![1, 77, 8 + 12]);
}

#[test]
fn long_prompts_concatenate_windows() {
    let (t, m) = pair("");
    let _guard = tch::no_grad_guard();
    let long = "a red circle, ".repeat(40);
    let options = PromptOptions {
        long_prompts: true,
        ..Default::default()
    };
    let out = encode(&t, &m, &long, EmbeddingLayer::Final, options, 1).unwrap();
    assert_eq!(out.windows, 3);
    assert_eq!(out.hidden.size(), vec![1, 231, 8]);
    let negative = encode(&t, &m, "", EmbeddingLayer::Final, options, out.windows).unwrap();
    assert_eq!(negative.hidden.size(), out.hidden.size());
    let truncated = encode(
        &t,
        &m,
        &long,
        EmbeddingLayer::Final,
        PromptOptions::default(),
        1,
    )
    .unwrap();
    assert_eq!(truncated.dropped, 160 - 75);
    // The first window of the long encoding is the truncated encoding.
    assert_close(
        "first window",
        &out.hidden.narrow(1, 0, 77),
        &truncated.hidden,
        Tolerance::abs(1e-6),
    );
}

#[test]
fn weighting_scales_tokens_and_keeps_the_mean() {
    let (t, m) = pair("");
    let _guard = tch::no_grad_guard();
    let plain = encode(
        &t,
        &m,
        "a red cat",
        EmbeddingLayer::Final,
        PromptOptions::default(),
        1,
    )
    .unwrap();
    let options = PromptOptions {
        weighting: true,
        ..Default::default()
    };
    let unit = encode(&t, &m, "a red cat", EmbeddingLayer::Final, options, 1).unwrap();
    assert_close(
        "weight 1 is a no-op",
        &unit.hidden,
        &plain.hidden,
        Tolerance::abs(1e-6),
    );
    let weighted = encode(&t, &m, "a (red:1.5) cat", EmbeddingLayer::Final, options, 1).unwrap();
    let mean = |x: &Tensor| x.mean(Kind::Float).double_value(&[]);
    assert!((mean(&weighted.hidden) - mean(&plain.hidden)).abs() < 1e-6);
    // Token 2 ("red") was scaled 1.5x relative to token 1 ("a").
    let ratio =
        |x: &Tensor| x.get(0).get(2).double_value(&[0]) / x.get(0).get(1).double_value(&[0]);
    assert!((ratio(&weighted.hidden) / ratio(&plain.hidden) - 1.5).abs() < 1e-4);
}
