//! The FLUX transformer against diffusers (reference/harness_flux.py): tiny
//! [dev]-like (guidance embedding) and [schnell]-like models, two images of
//! 12 packed latent tokens with diffusers' own image ids, 5 text tokens, two
//! timesteps, in f32 and bf16. Bounds: the error model's, one evaluation;
//! bit for bit on the machine that made the references.

use sd_core::DiffusersModel;
use sd_flux::{FluxInputs, FluxTransformer2DModel};
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{Device, Kind, Tensor};

fn model(name: &str, kind: Kind) -> FluxTransformer2DModel {
    let dir = reference_dir().join(format!("fixtures/flux/transformer-{name}"));
    FluxTransformer2DModel::from_folder(dir, Device::Cpu, kind, None).unwrap()
}

#[test]
fn dev_and_schnell_match_diffusers() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let outputs = reference_dir().join("fixtures/outputs/flux_transformer.safetensors");
    let reference = read_tensors(outputs).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    let (img_ids, txt_ids) = (t("flux.img_ids"), t("flux.txt_ids"));
    for name in ["dev", "schnell"] {
        for (dtype, kind) in [("f32", Kind::Float), ("bf16", Kind::BFloat16)] {
            let model = model(name, kind);
            let input = |key: &str| t(key).to_kind(kind);
            let (x, context, pooled) = (
                input("flux.latents"),
                input("flux.context"),
                input("flux.pooled"),
            );
            let (timestep, guidance) = (input("flux.timestep"), input("flux.guidance"));
            let mut inputs =
                FluxInputs::new(&x, &context, &pooled, &timestep, (&img_ids, &txt_ids));
            if name == "dev" {
                inputs.guidance = Some(&guidance);
            }
            let out = model.forward(&inputs).unwrap();
            assert_eq!(out.kind(), kind);
            let want = t(&format!("flux.{name}.{dtype}"));
            assert_matches(&format!("{name} {dtype}"), &out, &want, 1);
        }
    }
}

#[test]
fn guidance_and_shapes_are_checked_in_one_line() {
    let _guard = tch::no_grad_guard();
    let (dev, schnell) = (model("dev", Kind::Float), model("schnell", Kind::Float));
    let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let (x, context, pooled, timestep) = (
        zeros(&[1, 12, 16]),
        zeros(&[1, 5, 24]),
        zeros(&[1, 12]),
        zeros(&[1]),
    );
    let (img_ids, txt_ids) = (zeros(&[12, 3]), zeros(&[5, 3]));
    let inputs = FluxInputs::new(&x, &context, &pooled, &timestep, (&img_ids, &txt_ids));
    let error = dev.forward(&inputs).unwrap_err().to_string();
    assert!(error.contains("distilled guidance"), "{error}");
    let mut guided = FluxInputs::new(&x, &context, &pooled, &timestep, (&img_ids, &txt_ids));
    guided.guidance = Some(&timestep);
    let error = schnell.forward(&guided).unwrap_err().to_string();
    assert!(error.contains("no guidance embedding"), "{error}");
    let wide = zeros(&[1, 12, 17]);
    let bad = FluxInputs::new(&wide, &context, &pooled, &timestep, (&img_ids, &txt_ids));
    let error = schnell.forward(&bad).unwrap_err().to_string();
    assert!(error.contains("hidden_states [1, 12, 17]"), "{error}");
}

/// The pipeline's packing into 2x2 patches, unpacking and image ids equal
/// diffusers' `FluxPipeline` static methods (a 10x6 latent: an 80x48 image).
#[test]
fn packing_and_ids_match_diffusers() {
    use sd_flux::packing::{image_ids, pack, text_ids, unpack};
    let outputs = reference_dir().join("fixtures/outputs/flux_transformer.safetensors");
    let reference = read_tensors(outputs).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    let packed = pack(&t("pack.latent"));
    assert!(packed.equal(&t("pack.packed")));
    assert!(unpack(&packed, 10, 6).equal(&t("pack.unpacked")));
    assert!(unpack(&packed, 10, 6).equal(&t("pack.latent")));
    assert!(image_ids(5, 3, Device::Cpu).equal(&t("pack.img_ids")));
    assert!(image_ids(4, 3, Device::Cpu).equal(&t("flux.img_ids")));
    assert!(text_ids(5, Device::Cpu).equal(&t("flux.txt_ids")));
}

/// Black Forest Labs' layout (reference/harness_flux.py writes the tiny
/// [dev] pipeline's transformer so, checked there by diffusers' own conversion back):
/// every weight loads equal to the folder's, with or without ComfyUI's
/// `model.diffusion_model.` prefix; the config is read from the shapes of
/// full-size files (heads of 128) and refused for others in one line.
#[test]
fn bfl_single_files_load_the_folders_weights() {
    use sd_flux::bfl;
    let _guard = tch::no_grad_guard();
    let dir = reference_dir().join("fixtures/flux/pipeline-dev/transformer");
    let folder = FluxTransformer2DModel::from_folder(dir, Device::Cpu, Kind::Float, None).unwrap();
    let config = folder.config().clone();
    let file = reference_dir().join("fixtures/flux/single-file/tiny-flux-dev.safetensors");
    let prefixed = std::env::temp_dir().join(format!(
        "sd-flux-prefixed-{}.safetensors",
        std::process::id()
    ));
    let tensors = Tensor::read_safetensors(&file).unwrap();
    let renamed: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (format!("{}{k}", bfl::PREFIX), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&renamed, &prefixed).unwrap();
    for path in [&file, &prefixed] {
        let single = FluxTransformer2DModel::from_files(
            &config,
            std::slice::from_ref(path),
            Device::Cpu,
            Kind::Float,
            &|k| bfl::map(k, &config),
        )
        .unwrap();
        let theirs = folder.var_store().variables();
        for (name, ours) in single.var_store().variables() {
            assert!(ours.equal(&theirs[&name]), "{name}");
        }
    }
    let shapes = sd_core::weights::MappedFile::open(&file)
        .unwrap()
        .shapes()
        .unwrap();
    assert!(bfl::is_flux(shapes.keys()));
    let error = bfl::config_from_shapes(&shapes).unwrap_err().to_string();
    assert!(error.contains("heads of 16"), "{error}");
    std::fs::remove_file(prefixed).unwrap();
}
