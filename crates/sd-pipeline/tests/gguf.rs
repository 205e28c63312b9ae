//! GGUF models (reference/harness_gguf.py's tiny SD1 files): the UNet alone
//! without the checkpoint prefix (ComfyUI-GGUF's form) beside the diffusers
//! folder, and the whole checkpoint (stable-diffusion.cpp's form), with
//! weights in Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and F16. Layer weights stay in
//! their blocks; the runs are diffusers' on the dequantized weights.

use std::path::PathBuf;

use sd_core::DiffusersModel;
use sd_pipeline::{Request, StableDiffusion};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};

fn fixtures() -> PathBuf {
    reference_dir().join("fixtures")
}

fn request() -> Request {
    let mut r = Request::new("a red circle on a white background");
    (r.steps, r.width, r.height) = (4, Some(64), Some(64));
    r.guidance_scale = 7.5;
    r.seed = 0.into();
    r
}

fn load(file: &str) -> sd_pipeline::Result<StableDiffusion> {
    StableDiffusion::builder()
        .single_file(fixtures().join("gguf").join(file))
        .config_dir(fixtures().join("tiny-sd1"))
        .build()
}

/// How many of the UNet's variables are kept in GGML blocks.
fn packed(pipeline: &StableDiffusion) -> usize {
    let vs = pipeline.unet().unwrap().var_store();
    let variables = vs.variables();
    variables
        .values()
        .filter(|t| sd_core::packed::is_packed(t))
        .count()
}

#[test]
fn gguf_models_run_as_diffusers_on_their_dequantized_weights() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/gguf_sd1.safetensors")).unwrap();
    for (file, key) in [
        ("tiny-sd1-unet.gguf", "unet-only"),
        ("tiny-sd1.gguf", "whole"),
    ] {
        let pipeline = load(file).unwrap();
        // every linear and attention weight of the tiny UNet (2+ dims, rows
        // of whole blocks): the rest are convolutions (F16, decoded at load)
        assert!(
            packed(&pipeline) >= 20,
            "{file}: {} packed",
            packed(&pipeline)
        );
        let latents = pipeline.generate(&request()).unwrap().latents;
        assert_matches(file, &latents, &take(&reference, key).unwrap(), 4);
    }
}

#[test]
fn a_unet_alone_needs_a_folder_for_the_rest() {
    let error = StableDiffusion::builder()
        .single_file(fixtures().join("gguf/tiny-sd1-unet.gguf"))
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("tiny-sd1-unet.gguf"), "{error}");
    assert!(error.contains("holds a UNet alone"), "{error}");
}

fn scratch(name: &str) -> PathBuf {
    sd_testkit::scratch_dir("gguf-convert").join(name)
}

fn folder_run() -> tch::Tensor {
    let folder = StableDiffusion::builder()
        .model_dir(fixtures().join("tiny-sd1"))
        .build()
        .unwrap();
    folder.generate(&request()).unwrap().latents
}

/// A folder's UNet converted to GGUF under LDM names runs beside the folder:
/// in F32 as the folder itself (the same values), in Q8_0 as the file
/// converted back to safetensors (the same decoded values), near the folder.
#[test]
fn a_folder_converts_to_gguf_and_back() {
    use sd_pipeline::convert::{convert, Target};
    use sd_testkit::parity::assert_matches_reordered;
    tch::set_num_threads(1);
    let folder = fixtures().join("tiny-sd1");
    let exact = folder_run();

    let f32_file = scratch("unet-f32.gguf");
    let done = convert(
        &folder,
        &f32_file,
        Target::Gguf(sd_pipeline::convert::GgmlType::F32),
        false,
    )
    .unwrap();
    assert_eq!((done.quantized, done.dropped.len()), (0, 0));
    let run = StableDiffusion::builder()
        .single_file(&f32_file)
        .config_dir(&folder)
        .build()
        .unwrap();
    let f32_run = run.generate(&request()).unwrap().latents;
    assert_matches_reordered("F32 GGUF", &f32_run, &exact, 4);

    let q8 = scratch("unet-q8.gguf");
    let done = convert(
        &folder,
        &q8,
        Target::Gguf(sd_pipeline::convert::GgmlType::Q8_0),
        false,
    )
    .unwrap();
    // the tiny UNet's weights of more than 1024 values (city96's threshold)
    assert_eq!(done.quantized, 10, "{done:?}");
    let back = scratch("unet-q8.safetensors");
    convert(&q8, &back, Target::SafeTensors(tch::Kind::Float), false).unwrap();
    let (gguf, safetensors) = (load_file(&q8), load_file(&back));
    assert_eq!(packed(&gguf), done.quantized);
    let (a, b) = (
        gguf.generate(&request()).unwrap().latents,
        safetensors.generate(&request()).unwrap().latents,
    );
    assert_matches_reordered("Q8_0 GGUF vs its safetensors", &a, &b, 4);
    // Q8_0 keeps 8 bits a value: the run stays near the f32 one
    let drift = (&a - &exact).abs().max().double_value(&[]);
    let scale = exact.abs().max().double_value(&[]);
    assert!(drift < 0.05 * scale, "drift {drift} of {scale}");
}

fn load_file(file: &std::path::Path) -> StableDiffusion {
    StableDiffusion::builder()
        .single_file(file)
        .config_dir(fixtures().join("tiny-sd1"))
        .build()
        .unwrap()
}

#[test]
fn conversions_that_cannot_be_are_refused_in_one_line() {
    use sd_pipeline::convert::{convert, Target};
    let q8 = Target::Gguf(sd_pipeline::convert::GgmlType::Q8_0);
    let sd3 = fixtures().join("sd3/pipeline");
    let error = convert(&sd3, &scratch("sd3.gguf"), q8, false)
        .unwrap_err()
        .to_string();
    assert!(error.contains("an SD3 folder"), "{error}");
    let k = Target::Gguf(sd_pipeline::convert::GgmlType::Q4_K);
    let single = fixtures().join("single-file/tiny-sd1.safetensors");
    let error = convert(&single, &scratch("k.gguf"), k, true)
        .unwrap_err()
        .to_string();
    assert!(error.contains("Q4_K"), "{error}");
    let same = convert(&single, &single, q8, false)
        .unwrap_err()
        .to_string();
    assert!(same.contains("is the input"), "{same}");
}

/// The tiny SD3 run the SD3 tests here compare, from `builder`'s model.
fn sd3_latents(builder: sd_pipeline::StableDiffusionBuilder) -> tch::Tensor {
    let pipeline = builder.build().unwrap();
    let mut r = Request::new("a red circle on a white background");
    (r.steps, r.guidance_scale, r.max_sequence_length) = (4, 5.0, Some(16));
    (r.width, r.height) = (Some(48), Some(32));
    r.seed = 1.into();
    pipeline.generate(&r).unwrap().latents
}

/// llama.cpp's name of a transformers T5 encoder key (city96's GGUF T5s).
fn llama_name(key: &str) -> String {
    let parts = [
        (
            "layer.0.SelfAttention.relative_attention_bias",
            "attn_rel_b",
        ),
        ("layer.0.SelfAttention.q", "attn_q"),
        ("layer.0.SelfAttention.k", "attn_k"),
        ("layer.0.SelfAttention.v", "attn_v"),
        ("layer.0.SelfAttention.o", "attn_o"),
        ("layer.0.layer_norm", "attn_norm"),
        ("layer.1.DenseReluDense.wi_0", "ffn_gate"),
        ("layer.1.DenseReluDense.wi_1", "ffn_up"),
        ("layer.1.DenseReluDense.wo", "ffn_down"),
        ("layer.1.layer_norm", "ffn_norm"),
    ];
    let key = key
        .replace("encoder.block.", "enc.blk.")
        .replace("encoder.final_layer_norm", "enc.output_norm")
        .replace("shared.weight", "token_embd.weight");
    parts.iter().fold(key, |k, (from, to)| k.replace(from, to))
}

/// A GGUF T5 encoder in llama.cpp's names (weights in Q8_0 where rows are
/// whole blocks, the rest F32) through `--t5 FILE` runs as the same file
/// converted to safetensors (the decoded values, the same names).
#[test]
fn a_llama_named_gguf_t5_runs_as_its_decoded_copy() {
    use sd_pipeline::convert::{convert, GgmlType, Target};
    use sd_testkit::parity::assert_matches_reordered;
    tch::set_num_threads(1);
    let pipeline_dir = fixtures().join("sd3/pipeline");
    let source = pipeline_dir.join("text_encoder_3/model.safetensors");
    let tensors = tch::Tensor::read_safetensors(&source).unwrap();
    let plans: Vec<sd_gguf::TensorPlan> = (tensors.iter())
        .map(|(k, t)| sd_gguf::TensorPlan {
            name: llama_name(k),
            shape: t.size().iter().map(|&d| d as u64).collect(),
            kind: match t.dim() >= 2 && t.size()[t.dim() - 1] % 32 == 0 {
                true => GgmlType::Q8_0,
                false => GgmlType::F32,
            },
        })
        .collect();
    let gguf = scratch("t5-llama-q8.gguf");
    let mut data = |i: usize| {
        let values = Vec::<f32>::try_from(&tensors[i].1.flatten(0, -1)).unwrap();
        sd_gguf::quantize(plans[i].kind, &values, &plans[i].name)
    };
    sd_gguf::write(&gguf, &[], &plans, &mut data).unwrap();
    assert!(plans.iter().any(|p| p.kind == GgmlType::Q8_0));
    let decoded = scratch("t5-llama-q8.safetensors");
    convert(
        &gguf,
        &decoded,
        Target::SafeTensors(tch::Kind::Float),
        false,
    )
    .unwrap();
    let run = |t5: &std::path::Path| {
        let files = sd_pipeline::EncoderFiles::new().t5(t5);
        sd3_latents(
            StableDiffusion::builder()
                .model_dir(&pipeline_dir)
                .encoder_files(files),
        )
    };
    assert_matches_reordered("GGUF T5", &run(&gguf), &run(&decoded), 4);
}

/// Stability's SD3 single file converted to a transformer-only GGUF
/// (ComfyUI-GGUF's form: `--denoiser-only`, keys without the prefix) runs
/// beside the SD3 folder as its own safetensors copy does (the same file
/// converted back: the decoded values, the same prefix-less names).
#[test]
fn a_transformer_only_gguf_runs_beside_an_sd3_folder() {
    use sd_pipeline::convert::{convert, GgmlType, Target};
    use sd_testkit::parity::assert_matches_reordered;
    tch::set_num_threads(1);
    let single = fixtures().join("single-file/tiny-sd3.safetensors");
    let gguf = scratch("sd3-transformer-q8.gguf");
    let done = convert(&single, &gguf, Target::Gguf(GgmlType::Q8_0), true).unwrap();
    assert!(done.quantized > 0, "{done:?}");
    let back = scratch("sd3-transformer-q8.safetensors");
    convert(&gguf, &back, Target::SafeTensors(tch::Kind::Float), false).unwrap();
    let run = |file: &std::path::Path| {
        let folder = fixtures().join("sd3/pipeline");
        sd3_latents(
            StableDiffusion::builder()
                .single_file(file)
                .config_dir(folder),
        )
    };
    assert_matches_reordered("SD3 GGUF", &run(&gguf), &run(&back), 4);
}

/// A LoRA merges into quantized weights at the model's width (the same
/// run as on the decoded weights) and unloading puts the blocks back.
#[test]
fn a_lora_merges_into_gguf_weights_and_unloads_to_blocks() {
    use sd_pipeline::convert::{convert, Target};
    use sd_testkit::parity::assert_matches_reordered;
    tch::set_num_threads(1);
    let gguf = fixtures().join("gguf/tiny-sd1-unet.gguf");
    let decoded = scratch("tiny-sd1-unet-decoded.safetensors");
    convert(
        &gguf,
        &decoded,
        Target::SafeTensors(tch::Kind::Float),
        false,
    )
    .unwrap();
    let lora = sd_pipeline::LoraSpec::new(fixtures().join("lora/sd1-kohya.safetensors"), 0.5);
    let mut packed_model = load("tiny-sd1-unet.gguf").unwrap();
    let mut wide = load_file(&decoded);
    let blocks = packed(&packed_model);
    let before = packed_model.generate(&request()).unwrap().latents;
    packed_model.set_loras(std::slice::from_ref(&lora)).unwrap();
    wide.set_loras(&[lora]).unwrap();
    assert!(packed(&packed_model) < blocks);
    let (a, b) = (
        packed_model.generate(&request()).unwrap().latents,
        wide.generate(&request()).unwrap().latents,
    );
    assert_matches_reordered("LoRA on GGUF", &a, &b, 4);
    packed_model.unload_loras().unwrap();
    assert_eq!(packed(&packed_model), blocks);
    assert!(packed_model
        .generate(&request())
        .unwrap()
        .latents
        .equal(&before));
}
