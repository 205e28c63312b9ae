//! Stability's SD3 single-file layout through `StableDiffusion`: the tiny SD3
//! pipeline saved as one file (reference/harness_sd3.py,
//! write_sd3_single_files) against diffusers'
//! `StableDiffusion3Pipeline.from_single_file` run of it; a file without T5
//! taking T5 from the config folder; the refusals.

use sd_pipeline::{DiffusersModel, Request, Seed, StableDiffusion};
use sd_testkit::parity::{
    assert_image_matches, assert_matches_reordered, read_tensors, reference_dir, take,
};
use tch::{Kind, Tensor};

fn fixtures() -> std::path::PathBuf {
    reference_dir().join("fixtures")
}

/// diffusers' run: two images from one generator at 48x32, 4 steps.
fn request() -> Request {
    let mut r = Request::new("a red circle on a white background");
    r.negative_prompt = Some("blurry".into());
    (r.steps, r.guidance_scale, r.max_sequence_length) = (4, 5.0, Some(16));
    (r.width, r.height, r.num_images) = (Some(48), Some(32), 2);
    r.seed = Seed::Batch(1);
    r
}

fn load(file: &str, t5: bool) -> StableDiffusion {
    StableDiffusion::builder()
        .single_file(fixtures().join("single-file").join(file))
        .config_dir(fixtures().join("sd3/pipeline"))
        .t5(t5)
        .build()
        .unwrap()
}

#[test]
fn an_sd3_single_file_matches_diffusers_from_single_file() {
    tch::set_num_threads(1);
    let reference = read_tensors(fixtures().join("outputs/sd3_single_file.safetensors")).unwrap();
    let expected = take(&reference, "f32.txt2img").unwrap();
    let pipeline = load("tiny-sd3.safetensors", true);
    assert!(pipeline.text_encoder_3().is_some() && pipeline.transformer().is_some());
    same_weights_as_the_folder(&pipeline);
    let generation = pipeline.generate(&request()).unwrap();
    // diffusers' own single-file run is not its folder run bit for bit even
    // where the weights are the same: its CLIP-G built by from_single_file
    // pools one ulp away from the one from_pretrained builds (the same
    // tensors; inside transformers). The weights above are checked exactly,
    // the run against the error model.
    assert_matches_reordered("single file f32.txt2img", &generation.latents, &expected, 4);
    let decoded = pipeline.decode_latents(&expected).unwrap();
    assert_image_matches(
        "single file f32.txt2img",
        decoded[0].as_raw(),
        decoded[0].as_raw(),
        &take(&reference, "f32.txt2img.image").unwrap(),
        Kind::Float,
    );
    // A file without T5 takes it from the config folder: the same run, but
    // for rounding. (Weights are used in place in their files, as diffusers
    // uses them, and the kernels' rounding depends on where a weight starts:
    // this file's run in place and from 64-byte-aligned copies differed by
    // 2.4e-6 at a scale of 4.8, measured when loading in place came.)
    let no_t5 = load("tiny-sd3-no-t5.safetensors", true);
    assert!(no_t5.text_encoder_3().is_some());
    let again = no_t5.generate(&request()).unwrap();
    assert_matches_reordered("T5 from the folder", &again.latents, &generation.latents, 4);
    // Left out: zeros in T5's place, another result.
    let without = load("tiny-sd3.safetensors", false);
    assert!(without.text_encoder_3().is_none());
    let other = without.generate(&request()).unwrap().latents;
    assert!((other - &generation.latents).abs().max().double_value(&[]) > 1e-3);
}

/// Every weight loaded from the single file equals the folder's, bit for
/// bit, but CLIP-L's projection: an identity (Stability's files have none).
fn same_weights_as_the_folder(single: &StableDiffusion) {
    let folder = StableDiffusion::builder()
        .model_dir(fixtures().join("sd3/pipeline"))
        .build()
        .unwrap();
    let stores = |p: &StableDiffusion| {
        [
            p.transformer().unwrap().var_store().variables(),
            p.vae().var_store().variables(),
            p.text_encoder().var_store().variables(),
            p.text_encoder_2().unwrap().var_store().variables(),
            p.text_encoder_3()
                .unwrap()
                .resident()
                .unwrap()
                .var_store()
                .variables(),
        ]
    };
    for (ours, theirs) in stores(single).iter().zip(stores(&folder)) {
        assert_eq!(ours.len(), theirs.len());
        for (name, tensor) in ours {
            if name == "text_projection.weight" && tensor.size() == [8, 8] {
                let eye = Tensor::eye(8, (Kind::Float, tch::Device::Cpu));
                if tensor.equal(&eye) {
                    continue;
                }
            }
            assert!(
                tensor.equal(&theirs[name]),
                "{name} differs from the folder's"
            );
        }
    }
}

#[test]
fn sd3_single_files_say_what_they_lack_in_one_line() {
    let file = fixtures().join("single-file/tiny-sd3.safetensors");
    // T5's tokenizer is in no single file.
    let error = StableDiffusion::builder()
        .single_file(&file)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("T5's tokenizer is not in single files"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
    // Without a config folder, a transformer that is not SD3-shaped is named.
    let error = StableDiffusion::builder()
        .single_file(&file)
        .t5(false)
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("not made of 64-wide heads"), "{error}");
    assert_eq!(error.lines().count(), 1, "{error}");
    // A transformer-only file has no text encoders to fall back on.
    let error = StableDiffusion::builder()
        .single_file(fixtures().join("single-file/tiny-sd35-medium-transformer.safetensors"))
        .t5(false)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("an SD3 single file without text_encoders.clip_l"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
}

/// T5 asked for where there is none, or of a model that takes none; a file
/// of text encoders only given as the model: one line each.
#[test]
fn t5_asked_for_and_encoder_only_files_are_refused_in_one_line() {
    // An SD3 config folder without T5 (links to the tiny pipeline's parts).
    let dir = sd_testkit::scratch_dir("sd3-no-t5-config");
    let pipeline = fixtures().join("sd3/pipeline");
    for part in [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "transformer",
        "vae",
    ] {
        let link = dir.join(part);
        if !link.exists() {
            std::os::unix::fs::symlink(pipeline.join(part), &link).unwrap();
        }
    }
    let one_line = |error: sd_pipeline::PipelineError, expected: &str| {
        let error = error.to_string();
        assert!(error.contains(expected), "{error}");
        assert_eq!(error.lines().count(), 1, "{error}");
    };
    let refused = StableDiffusion::builder()
        .single_file(fixtures().join("single-file/tiny-sd3-no-t5.safetensors"))
        .config_dir(&dir)
        .t5(true)
        .build()
        .unwrap_err();
    one_line(refused, "t5: T5 was asked for, but");
    // Without asking, the same runs without T5.
    let runs = StableDiffusion::builder()
        .single_file(fixtures().join("single-file/tiny-sd3-no-t5.safetensors"))
        .config_dir(&dir)
        .build()
        .unwrap();
    assert!(runs.text_encoder_3().is_none());
    let refused = StableDiffusion::builder()
        .model_dir(fixtures().join("tiny-sd1"))
        .t5(true)
        .build()
        .unwrap_err();
    one_line(refused, "t5: T5 is SD3's third text encoder");
    // ComfyUI's clip_l.safetensors-like file (transformers' names) as the model.
    let clip = dir.join("clip_l.safetensors");
    let weights = fixtures().join("sd3/pipeline/text_encoder/model.safetensors");
    std::fs::copy(weights, &clip).unwrap();
    let refused = StableDiffusion::builder()
        .single_file(&clip)
        .build()
        .unwrap_err();
    one_line(refused, "only text encoders (CLIP or T5)");
}

/// Low-memory SD3 pipelines read T5 a block at a time as it encodes
/// (folders and single files alike): the same latents as T5 in memory.
#[test]
fn low_memory_streams_t5_with_the_same_result() {
    tch::set_num_threads(1);
    let folder = fixtures().join("sd3/pipeline");
    let held = StableDiffusion::builder()
        .model_dir(&folder)
        .build()
        .unwrap();
    let streamed = StableDiffusion::builder()
        .model_dir(&folder)
        .low_memory(true)
        .build()
        .unwrap();
    let t5 = streamed.text_encoder_3().unwrap();
    assert!(t5.resident().is_none(), "low memory holds no T5");
    let (a, b) = (
        held.generate(&request()).unwrap().latents,
        streamed.generate(&request()).unwrap().latents,
    );
    assert!(a.equal(&b));
    let file = StableDiffusion::builder()
        .single_file(fixtures().join("single-file/tiny-sd3.safetensors"))
        .config_dir(&folder)
        .low_memory(true)
        .build()
        .unwrap();
    assert!(file.text_encoder_3().unwrap().resident().is_none());
    let single = load("tiny-sd3.safetensors", true)
        .generate(&request())
        .unwrap()
        .latents;
    assert!(file.generate(&request()).unwrap().latents.equal(&single));
}

/// Stability's checkpoint split as ComfyUI users keep it: the transformer
/// and VAE in one file, each text encoder in a file of its own under
/// transformers' names (T5's embedding as `encoder.embed_tokens`).
fn split_as_comfyui_keeps_it() -> std::path::PathBuf {
    let dir = sd_testkit::scratch_dir("sd3-split-encoders");
    let all =
        Tensor::read_safetensors(fixtures().join("single-file/tiny-sd3.safetensors")).unwrap();
    let part = |prefix: &str, rename: &dyn Fn(&str) -> String| -> Vec<(String, Tensor)> {
        all.iter()
            .filter_map(|(k, t)| {
                k.strip_prefix(prefix)
                    .map(|rest| (rename(rest), t.shallow_clone()))
            })
            .collect()
    };
    let keep = |k: &str| k.to_string();
    let model: Vec<(String, Tensor)> = all
        .iter()
        .filter(|(k, _)| !k.starts_with("text_encoders."))
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    for (file, tensors) in [
        ("model.safetensors", model),
        (
            "clip_l.safetensors",
            part("text_encoders.clip_l.transformer.", &keep),
        ),
        (
            "clip_g.safetensors",
            part("text_encoders.clip_g.transformer.", &keep),
        ),
        ("t5xxl.safetensors", {
            let mut t5 = part("text_encoders.t5xxl.transformer.", &keep);
            t5.retain(|(k, _)| k != "shared.weight");
            t5
        }),
    ] {
        assert!(!tensors.is_empty(), "{file}");
        Tensor::write_safetensors(&tensors, dir.join(file)).unwrap();
    }
    dir
}

#[test]
fn text_encoders_from_files_of_their_own_give_the_same_run() {
    tch::set_num_threads(1);
    let dir = split_as_comfyui_keeps_it();
    let files = sd_pipeline::EncoderFiles::new()
        .clip_l(dir.join("clip_l.safetensors"))
        .clip_g(dir.join("clip_g.safetensors"))
        .t5(dir.join("t5xxl.safetensors"));
    let split = StableDiffusion::builder()
        .single_file(dir.join("model.safetensors"))
        .config_dir(fixtures().join("sd3/pipeline"))
        .encoder_files(files)
        .build()
        .unwrap();
    same_weights_as_the_folder(&split);
    let whole = load("tiny-sd3.safetensors", true);
    let (a, b) = (
        split.generate(&request()).unwrap().latents,
        whole.generate(&request()).unwrap().latents,
    );
    // (the same weights at other file offsets: the same run but for rounding)
    assert_matches_reordered("encoders from their own files", &a, &b, 4);

    // A folder takes a T5 file in place of its own: the same weights.
    let folder = StableDiffusion::builder()
        .model_dir(fixtures().join("sd3/pipeline"))
        .encoder_files(sd_pipeline::EncoderFiles::new().t5(dir.join("t5xxl.safetensors")))
        .build()
        .unwrap();
    let t5 = |p: &StableDiffusion| {
        p.text_encoder_3()
            .unwrap()
            .resident()
            .unwrap()
            .var_store()
            .variables()
    };
    let (ours, theirs) = (t5(&folder), t5(&whole));
    assert_eq!(ours.len(), theirs.len());
    for (name, tensor) in ours {
        assert!(tensor.equal(&theirs[&name]), "{name}");
    }
}

#[test]
fn wrong_encoder_files_are_refused_in_one_line() {
    use sd_pipeline::front::EncoderChoice;
    let dir = split_as_comfyui_keeps_it();
    let one_line = |error: String, expected: &str| {
        assert!(error.contains(expected), "{error}");
        assert_eq!(error.lines().count(), 1, "{error}");
    };
    let missing = dir.join("nowhere.safetensors");
    let error = EncoderChoice::parse(Some(missing.to_str().unwrap()), None, None).unwrap_err();
    one_line(error.to_string(), "t5: ");
    one_line(
        error.to_string(),
        "nowhere.safetensors: no such file (give none, required",
    );
    let error = EncoderChoice::parse(None, Some(&missing), None).unwrap_err();
    one_line(error.to_string(), "clip_l: ");
    let error = EncoderChoice::default()
        .with_vae(Some(&missing))
        .unwrap_err();
    one_line(error.to_string(), "vae: ");

    let build = |files: sd_pipeline::EncoderFiles| {
        StableDiffusion::builder()
            .single_file(dir.join("model.safetensors"))
            .config_dir(fixtures().join("sd3/pipeline"))
            .encoder_files(files)
            .t5(false)
            .build()
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    // T5's file given as CLIP-L
    let error = build(sd_pipeline::EncoderFiles::new().clip_l(dir.join("t5xxl.safetensors")));
    one_line(error, "not a CLIP text encoder");
    // CLIP-L's file given as T5 (and T5 left out at once: refused first)
    let error = build(sd_pipeline::EncoderFiles::new().t5(dir.join("clip_l.safetensors")));
    one_line(error, "T5 is left out (t5 false) but a T5 file was given");
    let error = StableDiffusion::builder()
        .single_file(dir.join("model.safetensors"))
        .config_dir(fixtures().join("sd3/pipeline"))
        .encoder_files(sd_pipeline::EncoderFiles::new().t5(dir.join("clip_l.safetensors")))
        .build()
        .map(|_| ())
        .unwrap_err()
        .to_string();
    one_line(error, "not a T5 encoder");
    // a CLIP-G file for a model with one text encoder
    let error = StableDiffusion::builder()
        .model_dir(fixtures().join("tiny-sd1"))
        .encoder_files(sd_pipeline::EncoderFiles::new().clip_g(dir.join("clip_g.safetensors")))
        .build()
        .map(|_| ())
        .unwrap_err()
        .to_string();
    one_line(error, "has one text encoder");
}

/// ComfyUI's `t5xxl_fp8_e4m3fn.safetensors`-like file: T5's layer weights in
/// 8 bits stay so (upcast per layer) and the run is that of the same
/// weights dequantized ahead of time.
#[test]
fn an_fp8_t5_file_runs_as_its_dequantized_copy() {
    tch::set_num_threads(1);
    let dir = split_as_comfyui_keeps_it();
    let t5 = Tensor::read_safetensors(dir.join("t5xxl.safetensors")).unwrap();
    let narrow = |eight_bit| sd_testkit::files::fp8_copy(&t5, Kind::Float8e4m3fn, eight_bit);
    let run = |eight_bit: bool| {
        let file = dir.join(format!("t5xxl-fp8-{eight_bit}.safetensors"));
        sd_testkit::files::write(&file, &narrow(eight_bit));
        let pipeline = StableDiffusion::builder()
            .model_dir(fixtures().join("sd3/pipeline"))
            .encoder_files(sd_pipeline::EncoderFiles::new().t5(&file))
            .build()
            .unwrap();
        let t5 = pipeline.text_encoder_3().unwrap().resident().unwrap();
        let weight = &t5.var_store().variables()["encoder.block.0.layer.0.SelfAttention.q.weight"];
        assert_eq!(weight.kind() == Kind::Float8e4m3fn, eight_bit);
        pipeline.generate(&request()).unwrap().latents
    };
    assert_matches_reordered("fp8 T5", &run(true), &run(false), 4);
}
