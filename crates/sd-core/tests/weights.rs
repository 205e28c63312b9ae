//! Weight loading: every kind of mismatch is reported by name, dtypes convert,
//! bad files fail with their path.

use std::path::PathBuf;

use sd_core::weights::{load_safetensors, LoadOptions, MappedFile};
use sd_core::CoreError;
use tch::{nn, nn::VarStore, Device, Kind, Tensor};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-core-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn model() -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    nn::linear(&root / "proj", 3, 2, Default::default());
    vs
}

fn write(name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let path = temp(name);
    Tensor::write_safetensors(tensors, &path).unwrap();
    path
}

fn weight() -> Tensor {
    Tensor::from_slice(&[1.0f32, 2., 3., 4., 5., 6.]).view([2, 3])
}

#[test]
fn loads_and_converts_dtype() {
    let vs = model();
    let file = write(
        "ok.safetensors",
        &[
            ("proj.weight", weight().to_kind(Kind::Half)),
            ("proj.bias", Tensor::from_slice(&[0.5f32, -0.5])),
        ],
    );
    let report = load_safetensors(&vs, &[file], &LoadOptions::default()).unwrap();
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    let loaded = vs.variables()["proj.weight"].shallow_clone();
    assert_eq!(loaded.kind(), Kind::Float);
    assert_eq!(loaded, weight());
}

#[test]
fn reports_missing_unexpected_and_misshapen_by_name() {
    let vs = model();
    let file = write(
        "bad.safetensors",
        &[
            (
                "proj.weight",
                Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)),
            ),
            ("proj.extra", Tensor::zeros([1], (Kind::Float, Device::Cpu))),
        ],
    );
    let err = load_safetensors(&vs, &[file], &LoadOptions::default()).unwrap_err();
    let CoreError::Weights { report, files } = &err else {
        panic!("{err}")
    };
    assert!(files.contains("bad.safetensors"));
    assert_eq!(report.missing, vec!["proj.bias".to_string()]);
    assert_eq!(report.unexpected, vec!["proj.extra".to_string()]);
    assert_eq!(
        report.mismatched,
        vec![("proj.weight".to_string(), vec![2, 3], vec![3, 2])]
    );
    let text = err.to_string();
    for needle in [
        "proj.bias",
        "proj.extra",
        "proj.weight: model [2, 3], file [3, 2]",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
}

#[test]
fn unexpected_can_be_allowed_and_keys_renamed() {
    let vs = model();
    let file = write(
        "legacy.safetensors",
        &[
            ("old.proj.weight", weight()),
            ("old.proj.bias", Tensor::from_slice(&[0.0f32, 0.0])),
            (
                "old.position_ids",
                Tensor::zeros([1, 77], (Kind::Int64, Device::Cpu)),
            ),
            ("stray", Tensor::zeros([1], (Kind::Float, Device::Cpu))),
        ],
    );
    let rename = |key: &str| -> Option<String> {
        if key.ends_with("position_ids") {
            return None;
        }
        Some(key.strip_prefix("old.").unwrap_or(key).to_string())
    };
    let options = LoadOptions {
        rename: Some(&rename),
        allow_unexpected: true,
    };
    let report = load_safetensors(&vs, &[&file], &options).unwrap();
    assert_eq!(report.unexpected, vec!["stray".to_string()]);
    assert_eq!(vs.variables()["proj.weight"], weight());

    let strict = LoadOptions {
        rename: Some(&rename),
        allow_unexpected: false,
    };
    assert!(load_safetensors(&vs, &[file], &strict).is_err());
}

#[test]
fn weights_may_span_several_files() {
    let vs = model();
    let a = write("shard-1.safetensors", &[("proj.weight", weight())]);
    let b = write(
        "shard-2.safetensors",
        &[("proj.bias", Tensor::from_slice(&[1.0f32, 2.0]))],
    );
    load_safetensors(&vs, &[a, b], &LoadOptions::default()).unwrap();
    assert_eq!(
        vs.variables()["proj.bias"],
        Tensor::from_slice(&[1.0f32, 2.0])
    );
}

#[test]
fn bad_files_name_their_path() {
    let garbage = temp("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    let err = MappedFile::open(&garbage)
        .err()
        .expect("garbage is rejected");
    assert!(matches!(err, CoreError::SafeTensors { .. }), "{err}");
    assert!(err.to_string().contains("garbage.safetensors"), "{err}");

    let missing = temp("nowhere.safetensors");
    let err = load_safetensors(&model(), &[missing], &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, CoreError::Io { .. }), "{err}");
    assert!(err.to_string().contains("nowhere.safetensors"), "{err}");
}

#[test]
fn mapped_file_lists_shapes_and_reads_owned_tensors() {
    let file = write("read.safetensors", &[("w", weight())]);
    let mapped = MappedFile::open(&file).unwrap();
    assert_eq!(mapped.shapes().unwrap()["w"], vec![2, 3]);
    let tensor = mapped.read("w").unwrap();
    drop(mapped);
    assert_eq!(tensor, weight());
}

/// The `/proc/self/maps` line of the mapping that holds `address`, if any.
fn mapping_of(address: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .find(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let (start, end) = range.split_once('-').unwrap_or(("0", "0"));
            let start = usize::from_str_radix(start, 16).unwrap_or(0);
            let end = usize::from_str_radix(end, 16).unwrap_or(0);
            (start..end).contains(&address)
        })
        .map(str::to_string)
}

#[test]
fn weights_of_the_stored_dtype_live_in_the_file_and_writes_stay_private() {
    let vs = model();
    let file = write(
        "in-place.safetensors",
        &[
            ("proj.weight", weight()),
            ("proj.bias", Tensor::from_slice(&[0.5f32, -0.5])),
        ],
    );
    load_safetensors(&vs, &[&file], &LoadOptions::default()).unwrap();
    let mut loaded = vs.variables()["proj.weight"].shallow_clone();
    let line = mapping_of(loaded.data_ptr() as usize).expect("the weight's address is mapped");
    assert!(
        line.ends_with("in-place.safetensors"),
        "the weight is not in the file's mapping: {line}"
    );

    // a write (a fused LoRA) changes the model's copy, never the file
    let before = std::fs::read(&file).unwrap();
    tch::no_grad(|| {
        let _ = loaded.g_add_scalar_(1.0);
    });
    assert_eq!(loaded, weight() + 1.0);
    assert_eq!(std::fs::read(&file).unwrap(), before);
    let again = model();
    load_safetensors(&again, &[&file], &LoadOptions::default()).unwrap();
    assert_eq!(again.variables()["proj.weight"], weight());
}

#[test]
fn converted_weights_get_memory_of_their_own() {
    let vs = model();
    let file = write(
        "converted.safetensors",
        &[
            ("proj.weight", weight().to_kind(Kind::Half)),
            ("proj.bias", Tensor::from_slice(&[0.5f32, -0.5])),
        ],
    );
    load_safetensors(&vs, &[&file], &LoadOptions::default()).unwrap();
    let converted = &vs.variables()["proj.weight"];
    let line = mapping_of(converted.data_ptr() as usize).unwrap_or_default();
    assert!(!line.ends_with("converted.safetensors"), "{line}");
    let same = &vs.variables()["proj.bias"];
    assert!(mapping_of(same.data_ptr() as usize)
        .unwrap_or_default()
        .ends_with("converted.safetensors"));
}

/// fp8 files: a layer's weight stays 8-bit, in the file's bytes, and is
/// upcast on each use exactly as torch converts it; 1-d tensors (biases,
/// norms) are converted at load.
#[test]
fn fp8_weights_stay_8_bit_in_place_and_upcast_per_use() {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(3);
    let w = Tensor::randn([2, 3], (Kind::Float, Device::Cpu)) * 3.0;
    let b = Tensor::randn([2], (Kind::Float, Device::Cpu));
    let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
    for kind in [Kind::Float8e4m3fn, Kind::Float8e5m2] {
        let vs = VarStore::new(Device::Cpu);
        let linear = sd_core::nn::Linear::new(&(vs.root() / "proj"), 3, 2, true);
        let file = temp(&format!("fp8-{kind:?}.safetensors"));
        let (w8, b8) = (w.to_kind(kind), b.to_kind(kind));
        sd_testkit::files::write(
            &file,
            &[
                ("proj.weight".into(), w8.shallow_clone()),
                ("proj.bias".into(), b8.shallow_clone()),
            ],
        );
        load_safetensors(&vs, &[&file], &LoadOptions::default()).unwrap();
        assert_eq!(linear.weight.kind(), kind);
        assert!(mapping_of(linear.weight.data_ptr() as usize)
            .unwrap_or_default()
            .ends_with(&format!("fp8-{kind:?}.safetensors")));
        assert_eq!(linear.bias.as_ref().unwrap().kind(), Kind::Float);
        let expected = x.linear(&w8.to_kind(Kind::Float), Some(&b8.to_kind(Kind::Float)));
        assert!(linear.forward(&x).equal(&expected), "{kind:?}");
    }
}

/// ComfyUI's scaled fp8 files, in both forms (`scale_weight` with the
/// `scaled_fp8` marker; the newer `weight_scale`): a weight is its fp8
/// values times its scalar, taken at load in f32 and rounded once to the
/// model's dtype; the scales, input scales and marker are no variables'.
#[test]
fn scaled_fp8_weights_are_scaled_at_load() {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(4);
    // (within e4m3's range once divided by the scale: 448)
    let w = Tensor::randn([2, 3], (Kind::Float, Device::Cpu)) * 3.0;
    let b = Tensor::randn([2], (Kind::Float, Device::Cpu));
    let scale = Tensor::from_slice(&[0.0625f32]).view([]);
    let w8 = (&w / 0.0625).to_kind(Kind::Float8e4m3fn);
    let expected = w8.to_kind(Kind::Float) * 0.0625;
    for (form, scale_key, extra) in [
        ("old", "proj.scale_weight", "scaled_fp8"),
        ("new", "proj.weight_scale", "proj.input_scale"),
    ] {
        for kind in [Kind::Float, Kind::BFloat16] {
            let mut vs = VarStore::new(Device::Cpu);
            vs.set_kind(kind);
            let linear = sd_core::nn::Linear::new(&(vs.root() / "proj"), 3, 2, true);
            let file = temp(&format!("scaled-{form}.safetensors"));
            sd_testkit::files::write(
                &file,
                &[
                    ("proj.weight".into(), w8.shallow_clone()),
                    ("proj.bias".into(), b.shallow_clone()),
                    (scale_key.into(), scale.shallow_clone()),
                    (extra.into(), Tensor::from_slice(&[1.0f32]).view([])),
                ],
            );
            load_safetensors(&vs, &[&file], &LoadOptions::default()).unwrap();
            assert_eq!(linear.weight.kind(), kind, "{form}");
            assert!(
                linear.weight.equal(&expected.to_kind(kind)),
                "{form} {kind:?}"
            );
        }
    }
}
