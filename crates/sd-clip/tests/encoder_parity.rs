//! The text encoders against transformers (reference/harness_outputs.py,
//! write_text_encoders): every hidden state, the final-normed output, the
//! pooled output and SDXL's projected embedding, f32 on CPU, max-abs <= 1e-4.

use sd_clip::{ClipTextModel, ClipTokenizer};
use sd_core::DiffusersModel;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{Device, Kind, Tensor};

#[test]
fn encoders_match_transformers() {
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/text_encoders.safetensors")).unwrap();
    let prompts = [
        "a photo of a cat",
        "",
        "a large blue triangle on a white background, (detailed:1.2)",
    ];
    let _guard = tch::no_grad_guard();
    for (name, folder, sub) in [
        ("sd1", "tiny-sd1", ""),
        ("sd2", "tiny-sd2", ""),
        ("sdxl_1", "tiny-sdxl", ""),
        ("sdxl_2", "tiny-sdxl", "_2"),
    ] {
        let t = |key: &str| take(&reference, &format!("{name}.{key}")).unwrap();
        let tokenizer =
            ClipTokenizer::from_folder(fixtures.join(folder).join(format!("tokenizer{sub}")))
                .unwrap();
        let ids: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| tokenizer.encode(p).unwrap().ids)
            .collect();
        let ids = Tensor::from_slice2(&ids);
        assert_eq!(ids, t("input_ids"), "{name} ids");
        let model = ClipTextModel::from_folder(
            fixtures.join(folder).join(format!("text_encoder{sub}")),
            Device::Cpu,
            Kind::Float,
            None,
        )
        .unwrap();
        let out = model.forward(&ids).unwrap();
        assert_matches(
            &format!("{name} hidden_states"),
            &Tensor::stack(&out.hidden_states, 0),
            &t("hidden_states"),
            1,
        );
        assert_matches(
            &format!("{name} last_hidden_state"),
            &out.last_hidden_state,
            &t("last_hidden_state"),
            1,
        );
        match out.text_embeds {
            Some(embeds) => assert_matches(
                &format!("{name} text_embeds"),
                &embeds,
                &t("text_embeds"),
                1,
            ),
            None => assert_matches(
                &format!("{name} pooled"),
                &out.pooled,
                &t("pooler_output"),
                1,
            ),
        }
    }
}

#[test]
fn clip_skip_uses_an_earlier_layer_through_the_final_norm() {
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/text_encoders.safetensors")).unwrap();
    let model = ClipTextModel::from_folder(
        fixtures.join("tiny-sd1/text_encoder"),
        Device::Cpu,
        Kind::Float,
        None,
    )
    .unwrap();
    let _guard = tch::no_grad_guard();
    let out = model
        .forward(&take(&reference, "sd1.input_ids").unwrap())
        .unwrap();
    // diffusers: final_layer_norm(hidden_states[-(clip_skip + 1)]), here clip_skip = 1.
    let hidden = take(&reference, "sd1.hidden_states").unwrap();
    let expected = model.final_layer_norm(&hidden.get(hidden.size()[0] - 2));
    let ours = model.final_layer_norm(&out.hidden_states[out.hidden_states.len() - 2]);
    assert_matches("clip_skip 1", &ours, &expected, 1);
}
