//! The MMDiT against diffusers (reference/harness_sd3.py, write_mmdit): tiny
//! SD3 (plain), SD3.5 Large-like (qk RMS norms) and SD3.5 Medium-like (qk
//! norms and dual attention) transformers, a 8x6 latent cropped from the
//! 12x12 position table, two timesteps, in f32 and bf16, and with block 1
//! skipped (skip-layer guidance). Bounds: the error model's, one
//! evaluation; bit for bit on the machine that made the references.

use sd_core::DiffusersModel;
use sd_mmdit::SD3Transformer2DModel;
use sd_testkit::parity::{assert_matches, read_tensors, reference_dir, take};
use tch::{Device, Kind};

#[test]
fn every_layout_matches_diffusers() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/sd3_mmdit.safetensors")).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    let timestep = t("mmdit.timestep");
    for name in ["sd3", "sd35-large", "sd35-medium"] {
        for (dtype, kind) in [("f32", Kind::Float), ("bf16", Kind::BFloat16)] {
            let model = SD3Transformer2DModel::from_folder(
                fixtures.join(format!("sd3/transformer-{name}")),
                Device::Cpu,
                kind,
                None,
            )
            .unwrap();
            let input = |key: &str| t(key).to_kind(kind);
            let run = |skip: &[usize]| {
                model
                    .forward(
                        &input("mmdit.latents"),
                        &timestep,
                        &input("mmdit.context"),
                        &input("mmdit.pooled"),
                        skip,
                    )
                    .unwrap()
            };
            let out = run(&[]);
            assert_eq!(out.kind(), kind);
            assert_matches(
                &format!("{name} {dtype}"),
                &out,
                &t(&format!("mmdit.{name}.{dtype}")),
                1,
            );
            if kind == Kind::Float {
                let skipped = run(&[1]);
                assert_matches(
                    &format!("{name} skip 1"),
                    &skipped,
                    &t(&format!("mmdit.{name}.skip1")),
                    1,
                );
            }
        }
    }
}

/// The tiny SD3.5-like transformers saved in Stability's single-file layout
/// (reference/harness_sd3.py, write_sd3_single_files: fused qkv, swapped
/// AdaLN halves, checked by diffusers' conversion back): the config read
/// from the file's shapes is the folder's (but the default image size), and
/// the loaded model gives the folder model's outputs, bit for bit (the same
/// weights: any difference is a mapping error).
#[test]
fn stability_single_files_load_the_same_model() {
    use sd_core::weights::MappedFile;
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let fixtures = reference_dir().join("fixtures");
    let reference = read_tensors(fixtures.join("outputs/sd3_mmdit.safetensors")).unwrap();
    let t = |key: &str| take(&reference, key).unwrap();
    for name in ["sd35-large", "sd35-medium"] {
        let path = fixtures.join(format!("single-file/tiny-{name}-transformer.safetensors"));
        let shapes = MappedFile::open(&path).unwrap().shapes().unwrap();
        let mut config = sd_mmdit::sai::config_from_shapes(&shapes).unwrap();
        let folder = fixtures.join(format!("sd3/transformer-{name}/config.json"));
        let expected = sd_mmdit::MmditConfig::from_file(&folder).unwrap();
        config.sample_size = expected.sample_size;
        assert_eq!(config, expected, "{name}");
        let layers = config.num_layers;
        let model =
            SD3Transformer2DModel::from_files(&config, &[path], Device::Cpu, Kind::Float, &|k| {
                sd_mmdit::sai::map(k, layers)
            })
            .unwrap();
        let folder_model = SD3Transformer2DModel::from_folder(
            fixtures.join(format!("sd3/transformer-{name}")),
            Device::Cpu,
            Kind::Float,
            None,
        )
        .unwrap();
        let run = |m: &SD3Transformer2DModel| {
            let (l, c, p) = (t("mmdit.latents"), t("mmdit.context"), t("mmdit.pooled"));
            m.forward(&l, &t("mmdit.timestep"), &c, &p, &[]).unwrap()
        };
        let out = run(&model);
        // The same weights: the same numbers as the folder's model, always.
        assert!(
            out.equal(&run(&folder_model)),
            "{name}: single file != folder"
        );
        assert_matches(name, &out, &t(&format!("mmdit.{name}.f32")), 1);
    }
}
